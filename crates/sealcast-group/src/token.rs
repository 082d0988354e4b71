//! Access-control tokens (oneM2M TS-0003 §7.1 "access control tokens",
//! TS-0004 §7.2/§7.4 obtain/update and validate): the manager signs, for one
//! entity, a short-lived set of rights; the entity carries it in the
//! commands it signs (`sealcast_core::broadcast::seal_broadcast_with_token`),
//! and every receiver validates it **offline** with the manager's public key
//! — no round trip, so it holds while the infrastructure is unreachable.
//!
//! A token is a signed statement (`sealcast_core::statement`, label
//! [`LABEL_TOKEN`]) over a CWT claims set (RFC 8392) with integer keys:
//!
//! ```text
//! { 1 iss: manager tstr, 2 sub: holder tstr, 4 exp: uint, 5 nbf: uint,
//!   6 iat: uint, 7 cti: bstr(8), 9 scope: [ [group, [operation tstr …]] … ] }
//! group = bstr (a group id) / "*" (every group);  operation "*" = every operation
//! ```
//!
//! Times are NumericDate seconds. The scope is shaped as an AIF (RFC 9237)
//! list of (object, permissions): the object a group, the permissions the
//! operations a command's first word names (`sealcast_group::acp::operation_of`)
//! or `alert`. Nothing here reads a clock: callers pass the time.

use ciborium::Value;
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::{EntityId, GroupId};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};

use crate::error::{Error, Result};

/// Domain-separation label of a token's signature.
pub const LABEL_TOKEN: &str = "sealcast access token v1";
/// Most bytes of a signed token (what a broadcast can carry).
pub const MAX_TOKEN_LEN: usize = sealcast_core::broadcast::MAX_ACCESS_TOKEN_LEN;
/// Most grants in one token.
pub const MAX_GRANTS: usize = 32;
/// Most operations in one grant.
pub const MAX_OPERATIONS: usize = 32;
/// Longest operation name.
pub const MAX_OPERATION_LEN: usize = 64;

const BAD: Error = Error::Malformed("access token");

const CLAIM_ISS: i64 = 1;
const CLAIM_SUB: i64 = 2;
const CLAIM_EXP: i64 = 4;
const CLAIM_NBF: i64 = 5;
const CLAIM_IAT: i64 = 6;
const CLAIM_CTI: i64 = 7;
const CLAIM_SCOPE: i64 = 9;

/// One right: operations on one group (or every group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The group (None: every group, `"*"` on the wire).
    pub group: Option<GroupId>,
    /// Operations, lower case; `*` is every operation.
    pub operations: Vec<String>,
}

impl Grant {
    fn covers(&self, operation: &str, group: &GroupId) -> bool {
        self.group.as_ref().is_none_or(|g| g == group)
            && self
                .operations
                .iter()
                .any(|op| op == "*" || (!operation.is_empty() && op == operation))
    }

    fn to_value(&self) -> Value {
        Value::Array(vec![
            match &self.group {
                Some(g) => Value::Bytes(g.as_bytes().to_vec()),
                None => Value::Text("*".into()),
            },
            Value::Array(
                self.operations
                    .iter()
                    .map(|o| Value::Text(o.clone()))
                    .collect(),
            ),
        ])
    }

    fn from_value(v: &Value) -> Result<Self> {
        let Value::Array(pair) = v else {
            return Err(BAD);
        };
        let [object, Value::Array(ops)] = pair.as_slice() else {
            return Err(BAD);
        };
        let group = match object {
            Value::Bytes(b) => Some(GroupId::new(b)?),
            Value::Text(t) if t == "*" => None,
            _ => return Err(BAD),
        };
        if ops.is_empty() || ops.len() > MAX_OPERATIONS {
            return Err(BAD);
        }
        let operations = ops
            .iter()
            .map(|o| match o {
                Value::Text(t) if valid_operation(t) => Ok(t.clone()),
                _ => Err(BAD),
            })
            .collect::<Result<_>>()?;
        Ok(Self { group, operations })
    }
}

/// Whether `op` can name an operation: `*`, or 1–64 lower-case ASCII
/// letters, digits, `-` and `_` (what `acp::operation_of` yields).
pub fn valid_operation(op: &str) -> bool {
    op == "*"
        || (!op.is_empty()
            && op.len() <= MAX_OPERATION_LEN
            && op
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_')))
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessToken {
    /// Who signed it (the manager).
    pub issuer: EntityId,
    /// Whom it empowers (the signer of the commands that carry it).
    pub subject: EntityId,
    /// Issued at (seconds since the epoch).
    pub issued_at: u64,
    /// Valid from (seconds).
    pub not_before: u64,
    /// Valid until, exclusive (seconds).
    pub expires: u64,
    /// Its id (random, for logs and audit).
    pub id: [u8; 8],
    /// The rights.
    pub scope: Vec<Grant>,
}

/// Why a token does not permit a request (short names for metrics, logs
/// and audit records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// None was carried.
    Missing,
    /// Not a token, or not signed by the manager.
    Forged,
    /// For another entity than the message's signer.
    OtherEntity,
    /// Not valid yet.
    NotYetValid,
    /// Expired.
    Expired,
    /// Valid, but its scope does not cover the operation on the group.
    NotGranted,
}

impl TokenRefusal {
    /// The short name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "no token",
            TokenRefusal::Forged => "token forged or not the manager's",
            TokenRefusal::OtherEntity => "token for another entity",
            TokenRefusal::NotYetValid => "token not valid yet",
            TokenRefusal::Expired => "token expired",
            TokenRefusal::NotGranted => "token does not grant it",
        }
    }
}

impl AccessToken {
    /// The CBOR claims set.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        if self.scope.is_empty() || self.scope.len() > MAX_GRANTS {
            return Err(Error::TooLarge {
                what: "access token grants (1 or more)",
                limit: MAX_GRANTS,
            });
        }
        for g in &self.scope {
            if g.operations.is_empty()
                || g.operations.len() > MAX_OPERATIONS
                || !g.operations.iter().all(|o| valid_operation(o))
            {
                return Err(Error::Malformed(
                    "access token grant: 1 to 32 operations, each `*` or lower-case letters, digits, - and _",
                ));
            }
        }
        if self.expires <= self.not_before {
            return Err(Error::Malformed("access token expires before it is valid"));
        }
        let claims = Value::Map(vec![
            (CLAIM_ISS.into(), Value::Text(self.issuer.as_str().into())),
            (CLAIM_SUB.into(), Value::Text(self.subject.as_str().into())),
            (CLAIM_EXP.into(), Value::from(self.expires)),
            (CLAIM_NBF.into(), Value::from(self.not_before)),
            (CLAIM_IAT.into(), Value::from(self.issued_at)),
            (CLAIM_CTI.into(), Value::Bytes(self.id.to_vec())),
            (
                CLAIM_SCOPE.into(),
                Value::Array(self.scope.iter().map(Grant::to_value).collect()),
            ),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&claims, &mut out).map_err(|_| BAD)?;
        Ok(out)
    }

    /// Parses a claims set: exactly the seven claims above, each once.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(Error::TooLarge {
                what: "access token",
                limit: MAX_TOKEN_LEN,
            });
        }
        let Value::Map(entries) = ciborium::from_reader::<Value, _>(bytes).map_err(|_| BAD)? else {
            return Err(BAD);
        };
        if entries.len() != 7 {
            return Err(BAD);
        }
        let claim = |key: i64| -> Result<&Value> {
            let mut found = entries.iter().filter(|(k, _)| {
                k.as_integer()
                    .and_then(|i| i64::try_from(i).ok())
                    .is_some_and(|i| i == key)
            });
            match (found.next(), found.next()) {
                (Some((_, v)), None) => Ok(v),
                _ => Err(BAD),
            }
        };
        let text =
            |key| -> Result<EntityId> { Ok(EntityId::new(claim(key)?.as_text().ok_or(BAD)?)?) };
        let uint = |key| -> Result<u64> {
            claim(key)?
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or(BAD)
        };
        let id: [u8; 8] = claim(CLAIM_CTI)?
            .as_bytes()
            .and_then(|b| b.as_slice().try_into().ok())
            .ok_or(BAD)?;
        let Value::Array(grants) = claim(CLAIM_SCOPE)? else {
            return Err(BAD);
        };
        if grants.is_empty() || grants.len() > MAX_GRANTS {
            return Err(BAD);
        }
        let token = Self {
            issuer: text(CLAIM_ISS)?,
            subject: text(CLAIM_SUB)?,
            expires: uint(CLAIM_EXP)?,
            not_before: uint(CLAIM_NBF)?,
            issued_at: uint(CLAIM_IAT)?,
            id,
            scope: grants
                .iter()
                .map(Grant::from_value)
                .collect::<Result<_>>()?,
        };
        if token.expires <= token.not_before {
            return Err(BAD);
        }
        Ok(token)
    }

    /// Signs the token with the manager's credential (which must be its
    /// issuer).
    pub fn sign(&self, manager: &EntityCredential) -> Result<Vec<u8>> {
        if manager.id() != &self.issuer {
            return Err(Error::WrongManager);
        }
        let bytes = sign_statement(
            manager.id(),
            manager.signing_key(),
            LABEL_TOKEN,
            &self.to_cbor()?,
        );
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(Error::TooLarge {
                what: "signed access token",
                limit: MAX_TOKEN_LEN,
            });
        }
        Ok(bytes)
    }

    /// Checks a signed token: signed by `manager` under the token label and
    /// naming it as issuer. Says nothing about time or holder: see
    /// [`Self::permits`].
    pub fn open(bytes: &[u8], manager: &PublicCredential) -> Result<Self> {
        let statement = UnverifiedStatement::parse(bytes, MAX_TOKEN_LEN)?;
        if statement.signer() != manager.id() {
            return Err(Error::WrongManager);
        }
        let token = Self::from_cbor(&statement.verify(manager.verifying_key(), LABEL_TOKEN)?)?;
        if token.issuer != *manager.id() {
            return Err(Error::WrongManager);
        }
        Ok(token)
    }

    /// Whether `bytes` have a token's shape (a statement whose payload is a
    /// map; orders and status lists are arrays). Unverified: only to route.
    pub fn looks_like(bytes: &[u8]) -> bool {
        UnverifiedStatement::parse(bytes, MAX_TOKEN_LEN).is_ok_and(|st| {
            matches!(
                ciborium::from_reader::<Value, _>(st.payload()),
                Ok(Value::Map(_))
            )
        })
    }

    /// Whether the token is valid at `at_s` (seconds).
    pub fn valid_at(&self, at_s: u64) -> core::result::Result<(), TokenRefusal> {
        if at_s < self.not_before {
            Err(TokenRefusal::NotYetValid)
        } else if at_s >= self.expires {
            Err(TokenRefusal::Expired)
        } else {
            Ok(())
        }
    }

    /// Whether it covers `operation` on `group`.
    pub fn grants(&self, operation: &str, group: &GroupId) -> bool {
        self.scope.iter().any(|g| g.covers(operation, group))
    }

    /// The whole validation a receiver makes of a verified token carried by
    /// `signer`'s message: the holder is the signer, the token is valid at
    /// every instant in `at_s` (the message's signed time and the
    /// receiver's clock), and it grants `operation` on `group`.
    pub fn permits(
        &self,
        signer: &EntityId,
        operation: &str,
        group: &GroupId,
        at_s: &[u64],
    ) -> core::result::Result<(), TokenRefusal> {
        if self.subject != *signer {
            return Err(TokenRefusal::OtherEntity);
        }
        for &t in at_s {
            self.valid_at(t)?;
        }
        if self.grants(operation, group) {
            Ok(())
        } else {
            Err(TokenRefusal::NotGranted)
        }
    }

    /// A one-line description for logs and `show` commands (no secrets in
    /// a token: names, operations and times only).
    pub fn describe(&self) -> String {
        let scope: Vec<String> = self
            .scope
            .iter()
            .map(|g| {
                format!(
                    "{} on {}",
                    g.operations.join(","),
                    g.group
                        .as_ref()
                        .map_or_else(|| "every group".to_owned(), |g| g.name().to_string())
                )
            })
            .collect();
        scope.join("; ")
    }
}

/// Validates the token bytes a message of `signer` carried (None: it
/// carried none) for `operation` on `group` at the instants `at_s`.
pub fn validate(
    token: Option<&[u8]>,
    manager: &PublicCredential,
    signer: &EntityId,
    operation: &str,
    group: &GroupId,
    at_s: &[u64],
) -> core::result::Result<AccessToken, TokenRefusal> {
    let bytes = token.ok_or(TokenRefusal::Missing)?;
    let token = AccessToken::open(bytes, manager).map_err(|_| TokenRefusal::Forged)?;
    token.permits(signer, operation, group, at_s)?;
    Ok(token)
}

/// Most signers whose last token a [`TokenCache`] keeps.
pub const MAX_CACHED_TOKENS: usize = 1024;

/// [`validate`] for a receiver that sees the same token in command after
/// command (a gateway carries one token until it is renewed): the last
/// token found authentic for each signer is kept with its exact bytes, so
/// the manager's signature over identical bytes is verified once; holder,
/// times and scope are checked every time, and any other bytes are
/// verified in full. Outcomes are exactly [`validate`]'s.
#[derive(Debug, Default)]
pub struct TokenCache {
    /// Per signer: the manager key that verified it, its bytes, its claims.
    last: std::collections::BTreeMap<EntityId, ([u8; 32], Vec<u8>, AccessToken)>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`validate`], verifying each signer's repeated token once.
    pub fn validate(
        &mut self,
        token: Option<&[u8]>,
        manager: &PublicCredential,
        signer: &EntityId,
        operation: &str,
        group: &GroupId,
        at_s: &[u64],
    ) -> core::result::Result<AccessToken, TokenRefusal> {
        let bytes = token.ok_or(TokenRefusal::Missing)?;
        let key = manager.verifying_key().to_bytes();
        let opened = match self.last.get(signer) {
            Some((k, held, t)) if *k == key && held.as_slice() == bytes => t.clone(),
            _ => {
                let t = AccessToken::open(bytes, manager).map_err(|_| TokenRefusal::Forged)?;
                if self.last.len() >= MAX_CACHED_TOKENS && !self.last.contains_key(signer) {
                    self.last.clear();
                }
                self.last
                    .insert(signer.clone(), (key, bytes.to_vec(), t.clone()));
                t
            }
        };
        opened.permits(signer, operation, group, at_s)?;
        Ok(opened)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::testrng::TestRng;

    fn cred(id: &str, seed: u64) -> EntityCredential {
        EntityCredential::generate(EntityId::new(id).unwrap(), &mut TestRng::new(seed))
    }
    fn gid(s: &str) -> GroupId {
        GroupId::new(s.as_bytes()).unwrap()
    }
    fn eid(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    fn token(sub: &str, scope: Vec<Grant>) -> AccessToken {
        AccessToken {
            issuer: eid("manager"),
            subject: eid(sub),
            issued_at: 1_000,
            not_before: 1_000,
            expires: 1_600,
            id: [7; 8],
            scope,
        }
    }

    fn grant(group: Option<&str>, ops: &[&str]) -> Grant {
        Grant {
            group: group.map(gid),
            operations: ops.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// (signer, operation, group, instants) → outcome.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [u64],
        core::result::Result<(), TokenRefusal>,
    );

    #[test]
    fn round_trip_and_offline_validation() {
        let m = cred("manager", 1);
        let t = token(
            "gw-1",
            vec![grant(Some("doors"), &["unlock"]), grant(None, &["alert"])],
        );
        let bytes = t.sign(&m).unwrap();
        assert!(AccessToken::looks_like(&bytes));
        let back = AccessToken::open(&bytes, &m.public()).unwrap();
        assert_eq!(back, t);
        let (gw, doors) = (eid("gw-1"), gid("doors"));
        // A table of cases: (signer, operation, group, times) → outcome.
        let cases: &[Case] = &[
            ("gw-1", "unlock", "doors", &[1_000, 1_200], Ok(())),
            ("gw-1", "alert", "sprinklers", &[1_599], Ok(())),
            (
                "gw-1",
                "extinguish",
                "doors",
                &[1_200],
                Err(TokenRefusal::NotGranted),
            ),
            (
                "gw-1",
                "unlock",
                "sprinklers",
                &[1_200],
                Err(TokenRefusal::NotGranted),
            ),
            ("gw-1", "", "doors", &[1_200], Err(TokenRefusal::NotGranted)),
            (
                "gw-2",
                "unlock",
                "doors",
                &[1_200],
                Err(TokenRefusal::OtherEntity),
            ),
            (
                "gw-1",
                "unlock",
                "doors",
                &[999],
                Err(TokenRefusal::NotYetValid),
            ),
            (
                "gw-1",
                "unlock",
                "doors",
                &[1_200, 1_600],
                Err(TokenRefusal::Expired),
            ),
        ];
        for (signer, op, group, at, want) in cases {
            assert_eq!(
                back.permits(&eid(signer), op, &gid(group), at),
                *want,
                "{signer} {op} {group} {at:?}"
            );
        }
        assert!(validate(Some(&bytes), &m.public(), &gw, "unlock", &doors, &[1_100]).is_ok());
        assert_eq!(
            validate(None, &m.public(), &gw, "unlock", &doors, &[1_100]).unwrap_err(),
            TokenRefusal::Missing
        );
        assert_eq!(back.describe(), "unlock on doors; alert on every group");
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let m = cred("manager", 1);
        let other = cred("manager", 2);
        let t = token("gw-1", vec![grant(Some("doors"), &["*"])]);
        let genuine = t.sign(&m).unwrap();
        // Signed by a key that is not the manager's.
        let forged = t.sign(&other).unwrap();
        assert!(AccessToken::open(&forged, &m.public()).is_err());
        // Signed by another entity.
        let mut by_gw = t.clone();
        by_gw.issuer = eid("gw-1");
        let gw = cred("gw-1", 3);
        assert!(AccessToken::open(&by_gw.sign(&gw).unwrap(), &m.public()).is_err());
        // A statement of another kind (another label) does not pass.
        let other_label = sign_statement(
            m.id(),
            m.signing_key(),
            "sealcast ack v1",
            &t.to_cbor().unwrap(),
        );
        assert!(AccessToken::open(&other_label, &m.public()).is_err());
        // Every one-byte change of the genuine token is refused.
        for i in 0..genuine.len() {
            let mut b = genuine.clone();
            b[i] ^= 0x01;
            if let Ok(back) = AccessToken::open(&b, &m.public()) {
                assert_eq!(back, t, "byte {i} changed the claims and still verified");
            }
        }
        // The manager does not sign a token naming another issuer.
        let mut foreign = t.clone();
        foreign.issuer = eid("someone");
        assert_eq!(foreign.sign(&m), Err(Error::WrongManager));
    }

    #[test]
    fn bounds_and_shapes() {
        let m = cred("manager", 1);
        assert!(token("gw-1", vec![]).sign(&m).is_err());
        assert!(
            token("gw-1", vec![grant(None, &["Unlock"])])
                .sign(&m)
                .is_err()
        );
        assert!(token("gw-1", vec![grant(None, &[])]).sign(&m).is_err());
        let many = (0..=MAX_GRANTS).map(|_| grant(None, &["x"])).collect();
        assert!(token("gw-1", many).sign(&m).is_err());
        let mut backwards = token("gw-1", vec![grant(None, &["x"])]);
        backwards.expires = backwards.not_before;
        assert!(backwards.sign(&m).is_err());
        // Not maps, duplicate or missing claims.
        for bad in [&[0x80u8][..], &[0xa0], &[0xff], &[]] {
            assert!(AccessToken::from_cbor(bad).is_err());
        }
        let ok = token("gw-1", vec![grant(None, &["x"])]).to_cbor().unwrap();
        assert!(AccessToken::from_cbor(&ok).is_ok());
        let mut dup = ok.clone();
        // Replace the scope key (9) by a second `iss` key (1): a duplicate.
        let pos = dup.iter().rposition(|b| *b == 0x09).unwrap();
        dup[pos] = 0x01;
        assert!(AccessToken::from_cbor(&dup).is_err());
        assert!(!AccessToken::looks_like(b"not a token"));
    }

    #[test]
    fn the_cache_decides_exactly_as_validate() {
        let m = cred("manager", 1);
        let other = cred("manager", 2);
        let (doors, lights) = (gid("doors"), gid("lights"));
        let t = token("gw-1", vec![grant(Some("doors"), &["unlock"])]);
        let genuine = t.sign(&m).unwrap();
        let forged = t.sign(&other).unwrap();
        let mut for_gw2 = t.clone();
        for_gw2.subject = eid("gw-2");
        let gw2s = for_gw2.sign(&m).unwrap();
        let mut cache = TokenCache::new();
        type CacheCase<'a> = (&'a str, Option<&'a [u8]>, &'a str, &'a GroupId, u64);
        let cases: &[CacheCase<'_>] = &[
            ("gw-1", Some(&genuine), "unlock", &doors, 1_100),
            ("gw-1", Some(&genuine), "unlock", &doors, 1_200),
            ("gw-1", Some(&genuine), "unlock", &lights, 1_200),
            ("gw-1", Some(&genuine), "unlock", &doors, 1_700),
            ("gw-1", Some(&forged), "unlock", &doors, 1_100),
            ("gw-1", Some(&genuine), "unlock", &doors, 1_100),
            ("gw-2", Some(&genuine), "unlock", &doors, 1_100),
            ("gw-2", Some(&gw2s), "unlock", &doors, 1_100),
            ("gw-1", None, "unlock", &doors, 1_100),
        ];
        for (signer, bytes, op, group, at) in cases {
            let want = validate(*bytes, &m.public(), &eid(signer), op, group, &[*at]);
            let got = cache.validate(*bytes, &m.public(), &eid(signer), op, group, &[*at]);
            assert_eq!(got, want, "{signer} {op} {at}");
        }
        // A cache filled under one manager key does not vouch under another,
        // even one with the same id.
        let foreign = cred("manager", 3);
        assert_eq!(
            cache.validate(
                Some(&genuine),
                &foreign.public(),
                &eid("gw-1"),
                "unlock",
                &doors,
                &[1_100]
            ),
            Err(TokenRefusal::Forged)
        );
    }
}

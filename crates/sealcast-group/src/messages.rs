//! The group protocol's statements (signed with `sealcast_core::statement`)
//! and their CBOR payloads.
//!
//! | statement | signer | label | payload |
//! |---|---|---|---|
//! | ack | member | `sealcast ack v1` | `[group, epoch]` |
//! | pull | member | `sealcast pull v1` | `[group, have_epoch / null, nonce]` |
//! | join notice | manager | `sealcast join notice v1` | `[group, epoch, signers, not_after / null, [leaf …]]` |
//! | tree rekey | manager | `sealcast tree rekey v1` | `[group, epoch, salt, signers, not_after / null, tree_rekey]` |
//!
//! Key material itself never travels in a statement: it goes end to end in
//! a key delivery (`sealcast_core::delivery`), or is computed by members
//! from what they hold (join ratchet, tree rekey).

use ciborium::Value;
use sealcast_core::groupkey::{AuthorizedSigner, signers_from_value, signers_to_value};
use sealcast_core::ids::{Epoch, GroupId, UnixMillis};

use crate::error::{Error, Result};

/// Largest statement accepted.
pub const MAX_STATEMENT_LEN: usize = 1 << 20;

/// Label of acks.
pub const LABEL_ACK: &str = "sealcast ack v1";
/// Label of pull requests.
pub const LABEL_PULL: &str = "sealcast pull v1";
/// Label of join notices.
pub const LABEL_JOIN: &str = "sealcast join notice v1";
/// Label of tree rekeys.
pub const LABEL_TREE_REKEY: &str = "sealcast tree rekey v1";

const BAD: Error = Error::Malformed("group protocol payload");

fn encode(v: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|_| BAD)?;
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Vec<Value>> {
    if bytes.len() > MAX_STATEMENT_LEN {
        return Err(BAD);
    }
    match ciborium::from_reader::<Value, _>(bytes).map_err(|_| BAD)? {
        Value::Array(a) => Ok(a),
        _ => Err(BAD),
    }
}

fn uint(v: &Value) -> Result<u64> {
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(BAD)
}

fn epoch(v: &Value) -> Result<Epoch> {
    Ok(Epoch::new(u32::try_from(uint(v)?).map_err(|_| BAD)?))
}

fn group(v: &Value) -> Result<GroupId> {
    Ok(GroupId::new(v.as_bytes().ok_or(BAD)?)?)
}

fn opt<T>(v: &Value, f: impl Fn(&Value) -> Result<T>) -> Result<Option<T>> {
    if v.is_null() {
        Ok(None)
    } else {
        f(v).map(Some)
    }
}

fn opt_uint(v: Option<u64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

/// A member's signed statement that it installed `epoch` of `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The group.
    pub group: GroupId,
    /// The installed epoch.
    pub epoch: Epoch,
}

impl Ack {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Bytes(self.group.as_bytes().to_vec()),
            Value::from(self.epoch.get()),
        ]))
    }
    /// Parses the payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes)?.as_slice() {
            [g, e] => Ok(Self {
                group: group(g)?,
                epoch: epoch(e)?,
            }),
            _ => Err(BAD),
        }
    }
}

/// A member's signed request for the current key material of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// The group.
    pub group: GroupId,
    /// The newest epoch the member holds, if any.
    pub have: Option<Epoch>,
    /// A fresh number, so the manager can tell requests apart.
    pub nonce: u64,
}

impl PullRequest {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Bytes(self.group.as_bytes().to_vec()),
            opt_uint(self.have.map(|e| u64::from(e.get()))),
            Value::from(self.nonce),
        ]))
    }
    /// Parses the payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes)?.as_slice() {
            [g, h, n] => Ok(Self {
                group: group(g)?,
                have: opt(h, epoch)?,
                nonce: uint(n)?,
            }),
            _ => Err(BAD),
        }
    }
}

/// The manager's signed notice that a group moved to `epoch` because a
/// member joined: every member of `epoch − 1` ratchets its key locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinNotice {
    /// The group.
    pub group: GroupId,
    /// The new epoch (exactly one above the previous).
    pub epoch: Epoch,
    /// The authorized signers from this epoch on.
    pub signers: Vec<AuthorizedSigner>,
    /// End of validity of the new epoch's material.
    pub not_after: Option<UnixMillis>,
    /// For tree groups: the newcomers' leaves (ascending); every member
    /// ratchets the tree nodes it shares with them (`lkh::MemberPath::apply_join`).
    pub leaves: Vec<u32>,
}

impl JoinNotice {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Bytes(self.group.as_bytes().to_vec()),
            Value::from(self.epoch.get()),
            signers_to_value(&self.signers),
            opt_uint(self.not_after.map(UnixMillis::get)),
            Value::Array(self.leaves.iter().map(|l| Value::from(*l)).collect()),
        ]))
    }
    /// Parses the payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes)?.as_slice() {
            [g, e, s, n, l] => Ok(Self {
                group: group(g)?,
                epoch: epoch(e)?,
                signers: signers_from_value(s)?,
                not_after: opt(n, |v| uint(v).map(UnixMillis::new))?,
                leaves: match l {
                    Value::Array(a) if a.len() <= crate::lkh::MAX_JOIN_LEAVES => a
                        .iter()
                        .map(|v| u32::try_from(uint(v)?).map_err(|_| BAD))
                        .collect::<Result<Vec<u32>>>()?,
                    _ => return Err(BAD),
                },
            }),
            _ => Err(BAD),
        }
    }
}

/// The manager's signed broadcast after an eviction from a tree group: the
/// new epoch's public parameters and the wrapped path keys from which every
/// remaining member computes the new group secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRekeyNotice {
    /// The group.
    pub group: GroupId,
    /// The new epoch.
    pub epoch: Epoch,
    /// The new master salt (public).
    pub salt: Vec<u8>,
    /// The authorized signers from this epoch on.
    pub signers: Vec<AuthorizedSigner>,
    /// End of validity of the new epoch's material.
    pub not_after: Option<UnixMillis>,
    /// The encoded key-tree rekey (`crate::lkh::TreeRekey`).
    pub rekey: Vec<u8>,
}

impl TreeRekeyNotice {
    /// CBOR payload.
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Bytes(self.group.as_bytes().to_vec()),
            Value::from(self.epoch.get()),
            Value::Bytes(self.salt.clone()),
            signers_to_value(&self.signers),
            opt_uint(self.not_after.map(UnixMillis::get)),
            Value::Bytes(self.rekey.clone()),
        ]))
    }
    /// Parses the payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        match decode(bytes)?.as_slice() {
            [g, e, salt, s, n, r] => {
                let salt = salt.as_bytes().ok_or(BAD)?.clone();
                if salt.len() > 64 {
                    return Err(BAD);
                }
                Ok(Self {
                    group: group(g)?,
                    epoch: epoch(e)?,
                    salt,
                    signers: signers_from_value(s)?,
                    not_after: opt(n, |v| uint(v).map(UnixMillis::new))?,
                    rekey: r.as_bytes().ok_or(BAD)?.clone(),
                })
            }
            _ => Err(BAD),
        }
    }
}

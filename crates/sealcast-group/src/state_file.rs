//! The state files of a group member, as bytes: what a device service keeps
//! between runs ([`MemberState`]) and what `sealcast seal --seq-state` and
//! `sealcast open --replay-state` keep between invocations ([`SeqState`],
//! [`ReplayState`]).
//!
//! One module for every member-side state format, without I/O: the callers
//! read and write the files (atomically, 0600, under their lock) through
//! `sealcast_store::DeviceStateFile`. Decoding is strict and complete before
//! anything is returned, so a caller applies a state only once all of it is
//! known to be good. Every decoder here is fuzzed
//! (`fuzz/fuzz_targets/group_state_files.rs`).

use ciborium::Value;
use sealcast_core::groupkey::{GroupKeyMaterial, MAX_SIGNERS};
use sealcast_core::ids::{Epoch, GroupId, SenderId};
use sealcast_core::replay::SeqWindow;
use zeroize::Zeroizing;

use crate::lkh::MemberPath;
use crate::{Error, Result};

/// Version of the device state layout.
pub const MEMBER_STATE_VERSION: u64 = 1;
/// Largest device state file read (its groups' material dominates).
pub const MAX_MEMBER_STATE_LEN: usize = 64 << 20;
/// Most groups, windows or reservations in one device state file.
const MAX_ENTRIES: usize = 1 << 16;

/// What a device keeps between runs: each held group's key material and
/// tree path, each receiver's replay windows, each sender's reservation.
///
/// CBOR: `[1, [[material, path / null]…], [[group, sender, window]…],
/// [[group, epoch, limit]…] (, order)]`, `order` being the payload of the
/// newest transmission order the device applied
/// (`TransmissionOrder::to_cbor`, a byte string; absent when it never got
/// one, so files without it read as before), `material` being
/// `GroupKeyMaterial::to_cbor`, `path` `MemberPath::to_bytes` and `window`
/// `SeqWindow::to_bytes`, each as a byte string. **Secret**: the file holds
/// group keys.
#[derive(Debug, Default)]
pub struct MemberState {
    /// The groups held, with their tree path where the group is a tree.
    pub groups: Vec<(GroupKeyMaterial, Option<MemberPath>)>,
    /// Replay windows: (group, sender, window).
    pub windows: Vec<(GroupId, SenderId, SeqWindow)>,
    /// Sender reservations: (group, epoch, exclusive limit reserved).
    pub reservations: Vec<(GroupId, u32, u64)>,
    /// The newest transmission order applied, if any.
    pub transmission: Option<crate::transmission::TransmissionOrder>,
}

impl MemberState {
    /// Encodes a state from borrowed parts (a device saves often: nothing is
    /// copied but the bytes written).
    pub fn encode<'a>(
        groups: &[(GroupKeyMaterial, Option<MemberPath>)],
        windows: impl IntoIterator<Item = (&'a GroupId, &'a SenderId, &'a SeqWindow)>,
        reservations: impl IntoIterator<Item = (&'a GroupId, u32, u64)>,
        transmission: Option<&crate::transmission::TransmissionOrder>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut held = Vec::with_capacity(groups.len());
        for (material, path) in groups {
            let m = material.to_cbor()?;
            let p = match path {
                Some(p) => Value::Bytes(p.to_bytes().to_vec()),
                None => Value::Null,
            };
            held.push(Value::Array(vec![Value::Bytes(m.to_vec()), p]));
        }
        let windows = windows
            .into_iter()
            .map(|(group, sender, window)| {
                Value::Array(vec![
                    Value::Bytes(group.as_bytes().to_vec()),
                    Value::Bytes(sender.as_bytes().to_vec()),
                    Value::Bytes(window.to_bytes()),
                ])
            })
            .collect();
        let reservations = reservations
            .into_iter()
            .map(|(group, epoch, limit)| {
                Value::Array(vec![
                    Value::Bytes(group.as_bytes().to_vec()),
                    Value::Integer(epoch.into()),
                    Value::Integer(limit.into()),
                ])
            })
            .collect();
        let mut top = vec![
            Value::Integer(MEMBER_STATE_VERSION.into()),
            Value::Array(held),
            Value::Array(windows),
            Value::Array(reservations),
        ];
        if let Some(order) = transmission {
            top.push(Value::Bytes(order.to_cbor()?));
        }
        let value = Value::Array(top);
        let mut bytes = Zeroizing::new(Vec::new());
        ciborium::into_writer(&value, &mut *bytes)
            .map_err(|_| Error::Malformed("device state: cannot encode"))?;
        Ok(bytes)
    }

    /// Decodes what [`MemberState::encode`] wrote: all of it, or an error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const BAD: Error = Error::Malformed("device state: malformed");
        let items = top_array(bytes, MAX_MEMBER_STATE_LEN, "device state")?;
        let (version, groups, windows, reservations, order) = match items.as_slice() {
            [v, g, w, r] => (v, g, w, r, None),
            [v, g, w, r, o] => (v, g, w, r, Some(o)),
            _ => return Err(BAD),
        };
        if sealcast_core::cbor::u64_of(version) != Some(MEMBER_STATE_VERSION) {
            return Err(Error::Malformed(
                "device state: unsupported version (written by a newer sealcast?)",
            ));
        }
        let mut state = Self::default();
        if let Some(o) = order {
            state.transmission = Some(crate::transmission::TransmissionOrder::from_cbor(
                bytes_of(o)?,
            )?);
        }
        for g in bounded(groups)? {
            let [m, p] = fields(g)? else { return Err(BAD) };
            let material = GroupKeyMaterial::from_cbor(bytes_of(m)?)?;
            let path = match p {
                Value::Null => None,
                p => Some(MemberPath::from_bytes(bytes_of(p)?)?),
            };
            if state
                .groups
                .iter()
                .any(|(held, _)| held.group() == material.group())
            {
                return Err(Error::Malformed("device state: a group appears twice"));
            }
            state.groups.push((material, path));
        }
        for w in bounded(windows)? {
            let [g, s, w] = fields(w)? else {
                return Err(BAD);
            };
            state.windows.push((
                GroupId::new(bytes_of(g)?)?,
                SenderId::new(bytes_of(s)?)?,
                SeqWindow::from_bytes(bytes_of(w)?)?,
            ));
        }
        for r in bounded(reservations)? {
            let [g, e, l] = fields(r)? else {
                return Err(BAD);
            };
            let epoch = sealcast_core::cbor::u64_of(e)
                .and_then(|e| u32::try_from(e).ok())
                .ok_or(BAD)?;
            let limit = sealcast_core::cbor::u64_of(l).ok_or(BAD)?;
            state
                .reservations
                .push((GroupId::new(bytes_of(g)?)?, epoch, limit));
        }
        Ok(state)
    }
}

/// What `sealcast open --replay-state` keeps: the receiver's replay windows
/// of one group and epoch.
///
/// CBOR: `["sealcast replay state v1", group, epoch, [[sender, window]…]]`,
/// senders in ascending order, each at most once.
#[derive(Debug)]
pub struct ReplayState {
    /// The group.
    pub group: GroupId,
    /// The epoch the windows belong to.
    pub epoch: Epoch,
    /// One window per sender.
    pub windows: Vec<(SenderId, SeqWindow)>,
}

const REPLAY_LABEL: &str = "sealcast replay state v1";

impl ReplayState {
    /// Largest replay state file: every authorised signer's largest window,
    /// with room for the framing.
    pub const MAX_LEN: usize = 256 + MAX_SIGNERS * (SeqWindow::MAX_ENCODED_LEN + 16);

    /// Encodes the state (senders sorted).
    pub fn encode<'a>(
        group: &GroupId,
        epoch: Epoch,
        windows: impl Iterator<Item = (&'a SenderId, &'a SeqWindow)>,
    ) -> Result<Vec<u8>> {
        let mut list: Vec<(&SenderId, &SeqWindow)> = windows.collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        let value = Value::Array(vec![
            Value::Text(REPLAY_LABEL.into()),
            Value::Bytes(group.as_bytes().to_vec()),
            Value::from(epoch.get()),
            Value::Array(
                list.into_iter()
                    .map(|(s, w)| {
                        Value::Array(vec![
                            Value::Bytes(s.as_bytes().to_vec()),
                            Value::Bytes(w.to_bytes()),
                        ])
                    })
                    .collect(),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes)
            .map_err(|_| Error::Malformed("replay state: cannot encode"))?;
        Ok(bytes)
    }

    /// Decodes what [`ReplayState::encode`] wrote: all of it, or an error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let items = top_array(bytes, Self::MAX_LEN, "replay state")?;
        let [
            Value::Text(label),
            Value::Bytes(g),
            Value::Integer(e),
            Value::Array(list),
        ] = items.as_slice()
        else {
            return Err(Error::Malformed("replay state: wrong layout"));
        };
        if label != REPLAY_LABEL {
            return Err(Error::Malformed("replay state: unknown format label"));
        }
        let group = GroupId::new(g)?;
        let epoch = Epoch::new(
            u32::try_from(*e).map_err(|_| Error::Malformed("replay state: epoch out of range"))?,
        );
        if list.len() > MAX_SIGNERS {
            return Err(Error::Malformed("replay state: too many senders"));
        }
        let mut windows: Vec<(SenderId, SeqWindow)> = Vec::with_capacity(list.len());
        for item in list {
            let Value::Array(pair) = item else {
                return Err(Error::Malformed(
                    "replay state: sender entry is not an array",
                ));
            };
            let [Value::Bytes(sid), Value::Bytes(w)] = pair.as_slice() else {
                return Err(Error::Malformed(
                    "replay state: sender entry has the wrong layout",
                ));
            };
            let sid = SenderId::new(sid)?;
            if windows.iter().any(|(s, _)| *s == sid) {
                return Err(Error::Malformed("replay state: a sender appears twice"));
            }
            windows.push((sid, SeqWindow::from_bytes(w)?));
        }
        Ok(Self {
            group,
            epoch,
            windows,
        })
    }
}

/// What `sealcast seal --seq-state` keeps: one sealer's next sequence number
/// and the reservation it may use without writing the file again.
///
/// Text, one `key=value` per line after a fixed header line (version 1):
/// `group` and `sender` in lower-case hex, `epoch`, `next` and `reserved`
/// in decimal, `next ≤ reserved`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqState {
    /// The group.
    pub group: GroupId,
    /// The epoch the numbers belong to.
    pub epoch: Epoch,
    /// The sealer's sender id.
    pub sender: SenderId,
    /// The next number to use.
    pub next: u64,
    /// The exclusive limit of the stored reservation.
    pub reserved: u64,
}

const SEQ_HEADER: &str = "# sealcast sequence state v1: one sealer per file, do not edit";

impl SeqState {
    /// Largest sequence state file.
    pub const MAX_LEN: usize = 4096;

    /// The file's text.
    pub fn encode(&self) -> String {
        format!(
            "{SEQ_HEADER}\ngroup={}\nepoch={}\nsender={}\nnext={}\nreserved={}\n",
            hex(self.group.as_bytes()),
            self.epoch,
            hex(self.sender.as_bytes()),
            self.next,
            self.reserved
        )
    }

    /// Parses [`SeqState::encode`]'s text, strictly: every field once, no
    /// other field, `next ≤ reserved`.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const KEYS: [&str; 5] = ["group", "epoch", "sender", "next", "reserved"];
        if bytes.len() > Self::MAX_LEN {
            return Err(Error::Malformed("sequence state: too long"));
        }
        let text = core::str::from_utf8(bytes)
            .map_err(|_| Error::Malformed("sequence state: not text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(SEQ_HEADER) {
            return Err(Error::Malformed(
                "sequence state: missing the sealcast header line",
            ));
        }
        let mut fields: [Option<&str>; 5] = [None; 5];
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or(Error::Malformed("sequence state: a line without '='"))?;
            let i = KEYS
                .iter()
                .position(|key| *key == k)
                .ok_or(Error::Malformed("sequence state: an unknown field"))?;
            if fields[i].replace(v).is_some() {
                return Err(Error::Malformed("sequence state: a field appears twice"));
            }
        }
        let get =
            |i: usize| fields[i].ok_or(Error::Malformed("sequence state: a field is missing"));
        let num = |i: usize| -> Result<u64> {
            get(i)?
                .parse::<u64>()
                .map_err(|_| Error::Malformed("sequence state: a number field is not a number"))
        };
        let group = GroupId::new(parse_hex(get(0)?)?)?;
        let epoch = Epoch::new(
            u32::try_from(num(1)?)
                .map_err(|_| Error::Malformed("sequence state: epoch out of range"))?,
        );
        let sender = SenderId::new(parse_hex(get(2)?)?)?;
        let (next, reserved) = (num(3)?, num(4)?);
        if next > reserved {
            return Err(Error::Malformed(
                "sequence state: next lies beyond the reservation",
            ));
        }
        Ok(Self {
            group,
            epoch,
            sender,
            next,
            reserved,
        })
    }
}

/// What the manager stores beside a group's key material (the store's
/// tree-state blob): the key material's validity and the LKH tree's state
/// (`KeyTree::to_bytes`). CBOR: `[validity_ms / null, tree / null]`.
/// **Secret** when it holds a tree: `Debug` shows its length only.
#[derive(Default)]
pub struct GroupStateBlob {
    /// How long the group's key material is valid, in milliseconds.
    pub validity_ms: Option<u64>,
    /// The tree's state, for a tree group.
    pub tree: Option<Zeroizing<Vec<u8>>>,
}

impl core::fmt::Debug for GroupStateBlob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupStateBlob")
            .field("validity_ms", &self.validity_ms)
            .field("tree_len", &self.tree.as_ref().map(|t| t.len()))
            .finish()
    }
}

impl GroupStateBlob {
    /// Encodes the blob.
    pub fn encode(validity_ms: Option<u64>, tree: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        let value = Value::Array(vec![
            validity_ms.map_or(Value::Null, Value::from),
            tree.map_or(Value::Null, |t| Value::Bytes(t.to_vec())),
        ]);
        let mut out = Zeroizing::new(Vec::new());
        let written = ciborium::into_writer(&value, &mut *out);
        wipe(value);
        written.map_err(|_| Error::Malformed("manager state blob: cannot encode"))?;
        Ok(out)
    }

    /// Decodes what [`GroupStateBlob::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const BAD: Error = Error::Malformed("manager state blob: malformed");
        let items = top_array(bytes, MAX_MEMBER_STATE_LEN, "manager state blob")?;
        let result = match items.as_slice() {
            [v, t] => {
                let validity_ms = match v {
                    Value::Null => Ok(None),
                    v => sealcast_core::cbor::u64_of(v).map(Some).ok_or(BAD),
                };
                let tree = match t {
                    Value::Null => Ok(None),
                    Value::Bytes(b) => Ok(Some(Zeroizing::new(b.clone()))),
                    _ => Err(BAD),
                };
                match (validity_ms, tree) {
                    (Ok(validity_ms), Ok(tree)) => Ok(Self { validity_ms, tree }),
                    _ => Err(BAD),
                }
            }
            _ => Err(BAD),
        };
        wipe(Value::Array(items));
        result
    }
}

/// Zeroizes the byte strings of a decoded or encoded blob (tree keys).
fn wipe(value: Value) {
    use zeroize::Zeroize;
    if let Value::Array(items) = value {
        for item in items {
            if let Value::Bytes(mut b) = item {
                b.zeroize();
            }
        }
    }
}

fn top_array(bytes: &[u8], max: usize, what: &'static str) -> Result<Vec<Value>> {
    if bytes.len() > max {
        return Err(Error::TooLarge { what, limit: max });
    }
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 8)
        .map_err(|_| Error::Malformed("state file: not CBOR"))?;
    if !reader.is_empty() {
        return Err(Error::Malformed("state file: trailing bytes"));
    }
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(Error::Malformed("state file: not an array")),
    }
}

fn bounded(v: &Value) -> Result<&[Value]> {
    match v.as_array() {
        Some(list) if list.len() <= MAX_ENTRIES => Ok(list),
        Some(_) => Err(Error::Malformed("device state: too many entries")),
        None => Err(Error::Malformed("device state: malformed")),
    }
}

fn fields(v: &Value) -> Result<&[Value]> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or(Error::Malformed("device state: malformed"))
}

fn bytes_of(v: &Value) -> Result<&[u8]> {
    v.as_bytes()
        .map(Vec::as_slice)
        .ok_or(Error::Malformed("device state: malformed"))
}

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    const BAD: Error = Error::Malformed("sequence state: an id is not hex");
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err(BAD);
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| BAD))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::crypto::AeadAlg;
    use sealcast_core::ids::SeqNum;
    use sealcast_core::testrng::TestRng;

    fn ids() -> (GroupId, SenderId) {
        (GroupId::new(b"g").unwrap(), SenderId::new([1]).unwrap())
    }

    #[test]
    fn seq_state_parsing_is_strict() {
        let (g, s) = ids();
        let st = SeqState {
            group: g,
            epoch: Epoch::new(3),
            sender: s,
            next: 5,
            reserved: 100,
        };
        assert_eq!(SeqState::decode(st.encode().as_bytes()).unwrap(), st);
        let text = st.encode();
        assert!(SeqState::decode(text.replace("next=5", "next=101").as_bytes()).is_err());
        assert!(SeqState::decode(format!("{text}next=1\n").as_bytes()).is_err());
        assert!(SeqState::decode(text.replace("epoch=3\n", "").as_bytes()).is_err());
        assert!(SeqState::decode(text.replace("group=67", "group=6").as_bytes()).is_err());
        assert!(SeqState::decode(text.replace("group=67", "group=é").as_bytes()).is_err());
        assert!(SeqState::decode(b"\xff").is_err());
        assert!(SeqState::decode(b"").is_err());
    }

    #[test]
    fn replay_state_round_trip_and_refusals() {
        let (g, s) = ids();
        let mut w = SeqWindow::new();
        let t = w.check(SeqNum::new(9).unwrap()).unwrap();
        w.commit(t).unwrap();
        let bytes = ReplayState::encode(&g, Epoch::new(1), [(&s, &w)].into_iter()).unwrap();
        let back = ReplayState::decode(&bytes).unwrap();
        assert_eq!((back.group, back.epoch), (g.clone(), Epoch::new(1)));
        assert!(back.windows[0].1.check(SeqNum::new(9).unwrap()).is_err());
        let twice =
            ReplayState::encode(&g, Epoch::new(1), [(&s, &w), (&s, &w)].into_iter()).unwrap();
        assert!(ReplayState::decode(&twice).is_err());
        assert!(ReplayState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ReplayState::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
        assert!(ReplayState::decode(b"\x80").is_err());
    }

    #[test]
    fn group_state_blob_round_trip_and_refusals() {
        let bytes = GroupStateBlob::encode(Some(86_400_000), Some(&[1, 2, 3])).unwrap();
        let back = GroupStateBlob::decode(&bytes).unwrap();
        // The tree's keys never reach a Debug print.
        let shown = format!("{back:?}");
        assert!(
            shown.contains("tree_len: Some(3)") && !shown.contains("[1, 2, 3]"),
            "{shown}"
        );
        assert_eq!(back.validity_ms, Some(86_400_000));
        assert_eq!(
            back.tree.as_deref().map(Vec::as_slice),
            Some(&[1u8, 2, 3][..])
        );
        let none = GroupStateBlob::decode(&GroupStateBlob::encode(None, None).unwrap()).unwrap();
        assert_eq!((none.validity_ms, none.tree.is_none()), (None, true));
        assert!(GroupStateBlob::decode(&[0x82, 0x20, 0xf6]).is_err());
        assert!(GroupStateBlob::decode(&[0x82, 0xf6, 0x01]).is_err());
        assert!(GroupStateBlob::decode(&[0x81, 0xf6]).is_err());
    }

    #[test]
    fn member_state_round_trip_and_refusals() {
        let mut rng = TestRng::new(5);
        let (g, s) = ids();
        let material = GroupKeyMaterial::generate(
            g.clone(),
            Epoch::new(2),
            AeadAlg::A128Gcm,
            Vec::new(),
            None,
            &mut rng,
        )
        .unwrap();
        let mut w = SeqWindow::new();
        let t = w.check(SeqNum::new(4).unwrap()).unwrap();
        w.commit(t).unwrap();
        let groups = vec![(material, None)];
        let bytes =
            MemberState::encode(&groups, [(&g, &s, &w)], [(&g, 2u32, 64u64)], None).unwrap();
        let back = MemberState::decode(&bytes).unwrap();
        assert_eq!(back.transmission, None);
        // With a transmission order (a fifth element), which round-trips.
        let order = crate::transmission::TransmissionOrder {
            manager: sealcast_core::ids::EntityId::new("manager").unwrap(),
            node: sealcast_core::ids::EntityId::new("door-1").unwrap(),
            version: 7,
            issued: sealcast_core::ids::UnixMillis::new(9),
            stopped: [crate::transmission::Scope::All].into(),
        };
        let with_order =
            MemberState::encode(&groups, [(&g, &s, &w)], [(&g, 2u32, 64u64)], Some(&order))
                .unwrap();
        assert_eq!(
            MemberState::decode(&with_order).unwrap().transmission,
            Some(order)
        );
        assert_eq!(back.groups.len(), 1);
        assert_eq!(back.groups[0].0.epoch(), Epoch::new(2));
        assert_eq!(back.windows.len(), 1);
        assert_eq!(back.reservations, vec![(g.clone(), 2, 64)]);
        // The same group twice, a newer version, truncation: refused whole.
        let doubled = vec![groups[0].clone(), groups[0].clone()];
        let bytes2 = MemberState::encode(&doubled, [], [], None).unwrap();
        assert!(MemberState::decode(&bytes2).is_err());
        let mut newer = bytes.to_vec();
        newer[1] = 2;
        assert!(MemberState::decode(&newer).is_err());
        assert!(MemberState::decode(&bytes[..bytes.len() - 2]).is_err());
    }
}

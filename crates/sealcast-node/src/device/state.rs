//! The device state file: the member's keys, the replay windows of the
//! groups it receives and the sequence reservations of those it sends to,
//! written before anything that depends on them leaves the node.

use super::*;

pub(super) const STATE_VERSION: u64 = 1;
/// Sequence numbers reserved at a time by a sender with a state file.
pub(super) const SEQ_BLOCK: u64 = 64;

pub(super) fn state_err(what: &str) -> Error {
    Error::Runtime(format!("device state file: {what}"))
}

pub(super) fn save_state(
    file: &DeviceStateFile,
    member: &Member,
    receivers: &BTreeMap<GroupId, BroadcastReceiver>,
    senders: &BTreeMap<(GroupId, u32), SeqAllocator>,
) -> Result<()> {
    let all: Vec<(&GroupId, &BroadcastReceiver)> = receivers.iter().collect();
    save_state_parts(file, member, &all, senders)
}

/// Encodes and writes (0600, atomically) a device's state: each held
/// group's material and tree path, each receiver's replay windows and each
/// sender reservation. CBOR: `[1, [[material, path/null]...],
/// [[group, sender, window]...], [[group, epoch, limit]...]]`.
pub(super) fn save_state_parts(
    file: &DeviceStateFile,
    member: &Member,
    receivers: &[(&GroupId, &BroadcastReceiver)],
    senders: &BTreeMap<(GroupId, u32), SeqAllocator>,
) -> Result<()> {
    use ciborium::Value;
    let mut groups = Vec::new();
    for (material, path) in member.export_groups() {
        let m = material.to_cbor()?;
        let p = match path {
            Some(p) => Value::Bytes(p.to_bytes().to_vec()),
            None => Value::Null,
        };
        groups.push(Value::Array(vec![Value::Bytes(m.to_vec()), p]));
    }
    let mut windows = Vec::new();
    for (group, receiver) in receivers {
        for (sender, window) in receiver.windows() {
            windows.push(Value::Array(vec![
                Value::Bytes(group.as_bytes().to_vec()),
                Value::Bytes(sender.as_bytes().to_vec()),
                Value::Bytes(window.to_bytes()),
            ]));
        }
    }
    let reservations = senders
        .iter()
        .map(|((group, epoch), alloc)| {
            Value::Array(vec![
                Value::Bytes(group.as_bytes().to_vec()),
                Value::Integer((*epoch).into()),
                Value::Integer(alloc.reserved_limit().into()),
            ])
        })
        .collect();
    let value = Value::Array(vec![
        Value::Integer(STATE_VERSION.into()),
        Value::Array(groups),
        Value::Array(windows),
        Value::Array(reservations),
    ]);
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    ciborium::into_writer(&value, &mut *bytes).map_err(|e| state_err(&e.to_string()))?;
    file.write(&bytes)?;
    Ok(())
}

pub(super) fn bytes_of(v: &ciborium::Value) -> Result<&[u8]> {
    v.as_bytes()
        .map(Vec::as_slice)
        .ok_or_else(|| state_err("malformed"))
}

pub(super) fn int_of(v: &ciborium::Value) -> Result<u64> {
    sealcast_core::cbor::u64_of(v).ok_or_else(|| state_err("malformed"))
}

/// Restores what [`save_state_parts`] wrote (nothing if the file is absent).
pub(super) fn restore_state(
    file: &DeviceStateFile,
    replay: &ReplayPolicies,
    member: &mut Member,
    receivers: &mut BTreeMap<GroupId, BroadcastReceiver>,
    senders: &mut BTreeMap<(GroupId, u32), SeqAllocator>,
) -> Result<()> {
    use ciborium::Value;
    use sealcast_core::ids::SenderId;
    use sealcast_core::replay::SeqWindow;
    use sealcast_group::lkh::MemberPath;
    let Some(bytes) = file.read()? else {
        return Ok(());
    };
    let value: Value =
        ciborium::from_reader(bytes.as_slice()).map_err(|e| state_err(&e.to_string()))?;
    let items = value.as_array().ok_or_else(|| state_err("malformed"))?;
    let [version, groups, windows, reservations] = items.as_slice() else {
        return Err(state_err("malformed"));
    };
    if int_of(version)? != STATE_VERSION {
        return Err(state_err("unsupported version"));
    }
    for g in groups.as_array().ok_or_else(|| state_err("malformed"))? {
        let [m, p] = g
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| state_err("malformed"))?
        else {
            return Err(state_err("malformed"));
        };
        let material = GroupKeyMaterial::from_cbor(bytes_of(m)?)?;
        let path = match p {
            Value::Null => None,
            p => Some(MemberPath::from_bytes(bytes_of(p)?)?),
        };
        let group = material.group().clone();
        member.import_group(material, path)?;
        if let Some(ctx) = member.context(&group) {
            let policy = replay.for_group(&group);
            receivers.insert(group, BroadcastReceiver::new(ctx?, policy)?);
        }
    }
    for w in windows.as_array().ok_or_else(|| state_err("malformed"))? {
        let [g, sender, window] = w
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| state_err("malformed"))?
        else {
            return Err(state_err("malformed"));
        };
        let group = GroupId::new(bytes_of(g)?)?;
        if let Some(r) = receivers.get_mut(&group) {
            r.restore_window(
                SenderId::new(bytes_of(sender)?)?,
                SeqWindow::from_bytes(bytes_of(window)?)?,
            );
        }
    }
    for r in reservations
        .as_array()
        .ok_or_else(|| state_err("malformed"))?
    {
        let [g, epoch, limit] = r
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| state_err("malformed"))?
        else {
            return Err(state_err("malformed"));
        };
        let group = GroupId::new(bytes_of(g)?)?;
        let epoch = u32::try_from(int_of(epoch)?).map_err(|_| state_err("malformed"))?;
        senders.insert(
            (group, epoch),
            SeqAllocator::resume(int_of(limit)?, SEQ_BLOCK)?,
        );
    }
    Ok(())
}

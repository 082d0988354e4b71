//! The device state file: the member's keys, the replay windows of the
//! groups it receives and the sequence reservations of those it sends to,
//! written before anything that depends on them leaves the node.

use super::*;
use sealcast_group::state_file::MemberState;

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
    transmission: Option<&TransmissionOrder>,
) -> Result<()> {
    let all: Vec<(&GroupId, &BroadcastReceiver)> = receivers.iter().collect();
    save_state_parts(file, member, &all, senders, transmission)
}

/// Encodes ([`MemberState`], `sealcast_group::state_file`) and writes
/// (0600, atomically) a device's state: each held group's material and tree
/// path, each receiver's replay windows, each sender reservation and the
/// transmission order it holds.
pub(super) fn save_state_parts(
    file: &DeviceStateFile,
    member: &Member,
    receivers: &[(&GroupId, &BroadcastReceiver)],
    senders: &BTreeMap<(GroupId, u32), SeqAllocator>,
    transmission: Option<&TransmissionOrder>,
) -> Result<()> {
    let groups = member.export_groups();
    let windows = receivers.iter().flat_map(|(group, receiver)| {
        receiver
            .windows()
            .map(move |(sender, window)| (*group, sender, window))
    });
    let reservations = senders
        .iter()
        .map(|((group, epoch), alloc)| (group, *epoch, alloc.reserved_limit()));
    let bytes = MemberState::encode(&groups, windows, reservations, transmission)?;
    file.write(&bytes)?;
    Ok(())
}

/// Restores what [`save_state_parts`] wrote (nothing if the file is absent).
/// The whole file is decoded and checked before anything is applied; it is
/// applied to the fresh member of a starting device, which does not start
/// if any part is refused.
pub(super) fn restore_state(
    file: &DeviceStateFile,
    replay: &ReplayPolicies,
    member: &mut Member,
    receivers: &mut BTreeMap<GroupId, BroadcastReceiver>,
    senders: &mut BTreeMap<(GroupId, u32), SeqAllocator>,
    transmission: &mut TransmissionControl,
) -> Result<()> {
    let Some(bytes) = file.read()? else {
        return Ok(());
    };
    let state = MemberState::decode(&bytes).map_err(|e| state_err(&e.to_string()))?;
    let mut restored_senders = BTreeMap::new();
    for (group, epoch, limit) in state.reservations {
        restored_senders.insert((group, epoch), SeqAllocator::resume(limit, SEQ_BLOCK)?);
    }
    let mut next_receivers = BTreeMap::new();
    for (material, path) in state.groups {
        let group = material.group().clone();
        member.import_group(material, path)?;
        if let Some(ctx) = member.context(&group) {
            let policy = replay.for_group(&group);
            next_receivers.insert(group, BroadcastReceiver::new(ctx?, policy)?);
        }
    }
    for (group, sender, window) in state.windows {
        if let Some(r) = next_receivers.get_mut(&group) {
            r.restore_window(sender, window);
        }
    }
    receivers.extend(next_receivers);
    senders.extend(restored_senders);
    if let Some(order) = state.transmission {
        transmission.commit(order);
    }
    Ok(())
}

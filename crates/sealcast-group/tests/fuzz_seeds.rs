//! Seeds for the fuzz targets of this crate's text and state decoders
//! (`group_state_files`, `control_protocol`): valid objects, so the fuzzers
//! start past the parsers. `cargo test` runs every decoder over each seed and
//! its truncations and bit flips (no panic, valid seeds decode); with
//! `SEALCAST_FUZZ_CORPUS_DIR` set (`.ci/run` sets it) the seeds are written
//! to `$SEALCAST_FUZZ_CORPUS_DIR/<target>/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sealcast_core::crypto::AeadAlg;
use sealcast_core::groupkey::GroupKeyMaterial;
use sealcast_core::ids::{Epoch, GroupId, SenderId, SeqNum};
use sealcast_core::replay::SeqWindow;
use sealcast_core::testrng::TestRng;
use sealcast_group::admin::parse_request;
use sealcast_group::lkh::KeyTree;
use sealcast_group::state_file::{GroupStateBlob, MemberState, ReplayState, SeqState};

fn state_seeds() -> Vec<Vec<u8>> {
    let mut rng = TestRng::new(11);
    let group = GroupId::new(b"fire-doors").unwrap();
    let sender = SenderId::new([7]).unwrap();
    let material = GroupKeyMaterial::generate(
        group.clone(),
        Epoch::new(3),
        AeadAlg::A128Gcm,
        Vec::new(),
        None,
        &mut rng,
    )
    .unwrap();
    let mut window = SeqWindow::new();
    for n in [1, 2, 5, 70] {
        let t = window.check(SeqNum::new(n).unwrap()).unwrap();
        window.commit(t).unwrap();
    }
    let member = MemberState::encode(
        &[(material, None)],
        [(&group, &sender, &window)],
        [(&group, 3, 128)],
        Some(&sealcast_group::transmission::TransmissionOrder {
            manager: sealcast_core::ids::EntityId::new("manager").unwrap(),
            node: sealcast_core::ids::EntityId::new("door-1").unwrap(),
            version: 3,
            issued: sealcast_core::ids::UnixMillis::new(1),
            stopped: [sealcast_group::transmission::Scope::parse("command:g").unwrap()].into(),
        }),
    )
    .unwrap();
    let replay =
        ReplayState::encode(&group, Epoch::new(3), [(&sender, &window)].into_iter()).unwrap();
    let seq = SeqState {
        group,
        epoch: Epoch::new(3),
        sender,
        next: 17,
        reserved: 100,
    }
    .encode();
    let tree = KeyTree::with_members(5, Epoch::new(3), &mut rng).unwrap();
    let blob = GroupStateBlob::encode(Some(86_400_000), Some(&tree.to_bytes())).unwrap();
    vec![member.to_vec(), replay, seq.into_bytes(), blob.to_vec()]
}

fn control_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"op":"list"}"#,
        r#"{"op":"rekey","group":"fire-doors"}"#,
        r#"{"op":"evict","group":"fire-doors","member":"door-3"}"#,
        r#"{"op":"show","group":"fire-doors","offset":0,"limit":50}"#,
        r#"{"op":"transmission","node":"sensor-1","action":"deactivate","scopes":["alert","command:fire-doors"]}"#,
        r#"{"op":"node","node":"sensor-1"}"#,
        r#"{"ok":true,"groups":[]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn every_decoder(bytes: &[u8]) {
    let _ = MemberState::decode(bytes);
    let _ = ReplayState::decode(bytes);
    let _ = SeqState::decode(bytes);
    if let Ok(blob) = GroupStateBlob::decode(bytes)
        && let Some(tree) = blob.tree
    {
        let _ = KeyTree::from_bytes(&tree);
    }
    let _ = parse_request(bytes);
}

#[test]
fn seeds_decode_and_their_mutations_never_panic() {
    let states = state_seeds();
    assert!(MemberState::decode(&states[0]).is_ok());
    assert!(ReplayState::decode(&states[1]).is_ok());
    assert!(SeqState::decode(&states[2]).is_ok());
    let blob = GroupStateBlob::decode(&states[3]).unwrap();
    assert!(KeyTree::from_bytes(blob.tree.as_deref().unwrap()).is_ok());
    let controls = control_seeds();
    for seed in &controls[..6] {
        assert!(
            parse_request(seed).is_ok(),
            "{}",
            String::from_utf8_lossy(seed)
        );
    }
    for seed in states.iter().chain(&controls) {
        for cut in 0..seed.len() {
            every_decoder(&seed[..cut]);
        }
        for i in 0..seed.len() {
            for bit in [0x01, 0x80] {
                let mut m = seed.clone();
                m[i] ^= bit;
                every_decoder(&m);
            }
        }
    }
}

#[test]
fn write_seed_corpus_when_asked() {
    let Some(dir) = std::env::var_os("SEALCAST_FUZZ_CORPUS_DIR") else {
        return;
    };
    for (target, seeds) in [
        ("group_state_files", state_seeds()),
        ("control_protocol", control_seeds()),
    ] {
        let target_dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&target_dir).unwrap();
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
}

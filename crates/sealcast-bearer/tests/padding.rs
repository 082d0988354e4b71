#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Size padding: frame lengths reveal the bucket only, and nothing of the
//! topic or payload is visible on the bearer.

mod common;

use common::{Fleet, at, topic};
use sealcast_bearer::frame::{DATA_HEADER_LEN, MAX_PLAINTEXT_LEN, PADDING_BUCKETS, data_frame_len};
use sealcast_bearer::{Error, FrameKind, ReceiverConfig, SenderConfig, peek};

fn data_len(fleet: &mut Fleet, topic_s: &str, payload: &[u8]) -> usize {
    let frames = fleet.protect(&topic(topic_s), payload, at(0));
    let data = frames.last().unwrap();
    assert_eq!(peek(data).unwrap().kind, FrameKind::Data);
    for f in &frames {
        if let Some(d) = fleet.receivers[0].handle(f, at(0)).unwrap() {
            assert_eq!(d.payload, payload);
        }
    }
    data.len()
}

#[test]
fn payloads_in_one_bucket_give_equal_frame_lengths() {
    let mut fleet = Fleet::new(30, 1, SenderConfig::default(), ReceiverConfig::default());
    // 5 bytes of lengths + topic + payload ≤ 256: all in the 256 bucket.
    let a = data_len(&mut fleet, "sealcast/g/01/cmd", &[1; 60]);
    let b = data_len(&mut fleet, "sealcast/g/01/cmd", &[2; 200]);
    let c = data_len(&mut fleet, "sealcast/g/0123456789abcdef/alert", &[3; 100]);
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(a, DATA_HEADER_LEN + 256 + 16);
    // Small objects all look alike too.
    assert_eq!(
        data_len(&mut fleet, "a", b""),
        data_len(&mut fleet, "a/b/c", &[9; 40])
    );
}

#[test]
fn every_bucket_is_used_and_lengths_are_exactly_predicted() {
    let mut fleet = Fleet::new(31, 1, SenderConfig::default(), ReceiverConfig::default());
    let t = "sealcast/g/01/cmd";
    let mut lens = Vec::new();
    for &bucket in &PADDING_BUCKETS {
        let fits = bucket - 5 - t.len();
        let len = data_len(&mut fleet, t, &vec![7; fits]);
        assert_eq!(Some(len), data_frame_len(t.len(), fits));
        assert_eq!(len, DATA_HEADER_LEN + bucket + 16);
        lens.push(len);
        if bucket < MAX_PLAINTEXT_LEN {
            // One byte more moves to the next bucket.
            assert!(data_len(&mut fleet, t, &vec![7; fits + 1]) > len);
        }
    }
    assert!(lens.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn too_large_objects_are_refused_and_change_nothing() {
    let mut fleet = Fleet::new(32, 1, SenderConfig::default(), ReceiverConfig::default());
    let t = topic("t");
    let before = fleet.sender.current_mtk_id();
    let big = vec![0; MAX_PLAINTEXT_LEN];
    assert!(matches!(
        fleet.sender.protect(&t, &big, at(0), &mut fleet.rng),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(fleet.sender.current_mtk_id(), before);
    assert_eq!(data_len(&mut fleet, "t", b"ok"), DATA_HEADER_LEN + 64 + 16);
}

#[test]
fn topic_and_payload_are_not_visible_on_the_bearer() {
    let mut fleet = Fleet::new(33, 1, SenderConfig::default(), ReceiverConfig::default());
    let t = "sealcast/g/fire-doors-17/cmd";
    let payload = b"\xd0\x83\x43\xa1\x01\x01 unlock doors, group 2";
    for f in fleet.protect(&topic(t), payload, at(0)) {
        for needle in [t.as_bytes(), b"fire-doors", b"unlock doors".as_slice()] {
            assert!(!f.windows(needle.len()).any(|w| w == needle));
        }
    }
}

//! The key tree against its members: joins, evictions, growth, state
//! files and hostile messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::wire::write_head;
use super::*;
use sealcast_core::testrng::TestRng;

fn e(n: u32) -> Epoch {
    Epoch::new(n)
}

fn sample_rekey() -> TreeRekey {
    let mut rng = TestRng::new(7);
    let mut tree = KeyTree::with_members(8, e(1), &mut rng).unwrap();
    tree.remove_member(LeafIndex::new(5), e(2), &mut rng)
        .unwrap()
}

#[test]
fn root_refresh_reaches_every_member_with_one_unwrap_and_no_outsider() {
    let mut rng = TestRng::new(11);
    for n in [1usize, 2, 3, 5, 8, 13] {
        let mut tree = KeyTree::with_members(n, e(1), &mut rng).unwrap();
        // Make the tree sparse on one side too: evict the last member.
        let mut epoch = 1;
        if n > 2 {
            epoch += 1;
            tree.remove_member(LeafIndex::new(n as u32 - 1), e(epoch), &mut rng)
                .unwrap();
        }
        let mut paths: Vec<MemberPath> = tree.members().map(|l| tree.path(l).unwrap()).collect();
        let old_root = *tree.root_key().unwrap().as_bytes();
        epoch += 1;
        let rekey = tree.refresh_root(e(epoch), &mut rng).unwrap();
        assert!(!rekey.wrapped().is_empty() && rekey.wrapped().len() <= 2);
        assert_eq!(TreeRekey::from_cbor(&rekey.to_cbor()).unwrap(), rekey);
        let new_root = *tree.root_key().unwrap().as_bytes();
        assert_ne!(new_root, old_root, "n = {n}");
        for p in &mut paths {
            let outcome = p.apply(&rekey).unwrap();
            assert_eq!(outcome.unwraps, 1);
            assert_eq!(outcome.root.as_bytes(), &new_root);
            assert_eq!(p.root_key().as_bytes(), &new_root);
            assert!(p.to_bytes()[..] == tree.path(p.leaf()).unwrap().to_bytes()[..]);
        }
        // A stale epoch is refused, and the tree stays usable.
        assert!(matches!(
            tree.refresh_root(e(epoch), &mut rng),
            Err(Error::StaleEpoch { .. })
        ));
    }
    // Nothing to refresh in an empty tree.
    assert!(KeyTree::new().refresh_root(e(1), &mut rng).is_err());
}

#[test]
fn rekey_roundtrips_and_sizes_match() {
    let rekey = sample_rekey();
    assert_eq!(rekey.wrapped().len(), 5);
    let bytes = rekey.to_cbor();
    assert_eq!(bytes.len(), rekey.encoded_len());
    assert_eq!(TreeRekey::from_cbor(&bytes).unwrap(), rekey);
}

#[test]
fn hostile_rekey_bytes_are_refused() {
    let good = sample_rekey().to_cbor();
    // Every truncation.
    for n in 0..good.len() {
        assert!(TreeRekey::from_cbor(&good[..n]).is_err(), "prefix {n}");
    }
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert!(TreeRekey::from_cbor(&long).is_err());
    // Every single-byte corruption either fails or still decodes to a
    // valid rekey (ciphertext bytes); never panics.
    for i in 0..good.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= x;
            if let Ok(r) = TreeRekey::from_cbor(&b) {
                assert_eq!(r.to_cbor(), b);
            }
        }
    }
    // Oversized input.
    assert!(matches!(
        TreeRekey::from_cbor(&vec![0u8; MAX_REKEY_LEN + 1]),
        Err(Error::TooLarge { .. })
    ));
    // Huge declared array / byte string lengths.
    for b in [
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0x84, 0x01, 0x02, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff],
        &[
            0x84, 0x01, 0x02, 0x01, 0x81, 0x83, 0x01, 0x02, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff,
        ],
        &[0x9f, 0xff], // indefinite length
    ] {
        assert!(TreeRekey::from_cbor(b).is_err());
    }
    // Deep nesting.
    let deep = vec![0x81u8; 3000];
    assert!(TreeRekey::from_cbor(&deep).is_err());
}

fn encode(version: u64, epoch: u64, depth: u64, entries: &[(u64, u64, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, 4, 4);
    write_head(&mut out, 0, version);
    write_head(&mut out, 0, epoch);
    write_head(&mut out, 0, depth);
    write_head(&mut out, 4, entries.len() as u64);
    for (node, under, len) in entries {
        write_head(&mut out, 4, 3);
        write_head(&mut out, 0, *node);
        write_head(&mut out, 0, *under);
        write_head(&mut out, 2, *len as u64);
        out.extend(std::iter::repeat_n(0u8, *len));
    }
    out
}

#[test]
fn structural_checks() {
    let ok = encode(1, 5, 2, &[(2, 5, 48), (1, 2, 48), (1, 3, 48)]);
    assert!(TreeRekey::from_cbor(&ok).is_ok());
    assert!(TreeRekey::from_cbor(&encode(1, 5, 2, &[])).is_ok());
    let bad: &[(&str, Vec<u8>)] = &[
        ("version", encode(2, 5, 2, &[(1, 2, 48)])),
        ("epoch > u32", encode(1, 1 << 32, 2, &[(1, 2, 48)])),
        ("depth 0", encode(1, 5, 0, &[])),
        ("depth too big", encode(1, 5, 21, &[(1, 2, 48)])),
        ("short ct", encode(1, 5, 2, &[(1, 2, 47)])),
        ("long ct", encode(1, 5, 2, &[(1, 2, 49)])),
        ("not a child", encode(1, 5, 2, &[(1, 4, 48)])),
        ("leaf as node", encode(1, 5, 2, &[(4, 8, 48)])),
        ("node 0", encode(1, 5, 2, &[(0, 1, 48)])),
        ("duplicate", encode(1, 5, 2, &[(1, 2, 48), (1, 2, 48)])),
        ("top-down", encode(1, 5, 2, &[(1, 2, 48), (2, 5, 48)])),
        (
            "two paths",
            encode(1, 5, 2, &[(2, 5, 48), (3, 6, 48), (1, 2, 48)]),
        ),
        ("no root", encode(1, 5, 2, &[(2, 5, 48)])),
        (
            "too many for depth",
            encode(1, 5, 1, &[(1, 2, 48), (1, 3, 48), (1, 3, 48)]),
        ),
    ];
    for (what, bytes) in bad {
        assert!(TreeRekey::from_cbor(bytes).is_err(), "{what}");
    }
    // More entries than MAX_WRAPPED_KEYS is refused before any per-entry work.
    let many: Vec<(u64, u64, usize)> = (0..41).map(|_| (1, 2, 48)).collect();
    assert!(matches!(
        TreeRekey::from_cbor(&encode(1, 5, 20, &many)),
        Err(Error::TooLarge { .. })
    ));
    // Non-shortest integer encodings.
    let mut b = ok.clone();
    b[2] = 0x18; // epoch 5 as a 1-byte argument
    b.insert(3, 5);
    assert!(TreeRekey::from_cbor(&b).is_err());
}

#[test]
fn tree_join_roundtrip_and_hostile() {
    let j = TreeJoin::new(e(9), vec![LeafIndex(3), LeafIndex(7), LeafIndex(300)]).unwrap();
    let good = j.to_cbor();
    assert_eq!(TreeJoin::from_cbor(&good).unwrap(), j);
    for k in 0..good.len() {
        assert!(TreeJoin::from_cbor(&good[..k]).is_err());
    }
    let mut long = good.clone();
    long.push(0);
    assert!(TreeJoin::from_cbor(&long).is_err());
    assert!(TreeJoin::new(e(1), vec![]).is_err());
    assert!(TreeJoin::new(e(1), vec![LeafIndex(2), LeafIndex(2)]).is_err());
    assert!(TreeJoin::new(e(1), vec![LeafIndex(3), LeafIndex(2)]).is_err());
    assert!(TreeJoin::new(e(1), vec![LeafIndex(1 << 20)]).is_err());
    assert!(matches!(
        TreeJoin::from_cbor(&vec![0u8; MAX_JOIN_LEN + 1]),
        Err(Error::TooLarge { .. })
    ));
    // A huge declared leaf count behind a short input.
    assert!(TreeJoin::from_cbor(&[0x83, 0x01, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff]).is_err());
    // Non-shortest leaf encoding.
    assert!(TreeJoin::from_cbor(&[0x83, 0x01, 0x01, 0x81, 0x18, 0x03]).is_err());
}

#[test]
fn tree_state_roundtrip_and_hostile() {
    let mut rng = TestRng::new(3);
    let mut tree = KeyTree::with_members(5, e(1), &mut rng).unwrap();
    tree.remove_member(LeafIndex(1), e(2), &mut rng).unwrap();
    let bytes = tree.to_bytes();
    let back = KeyTree::from_bytes(&bytes).unwrap();
    assert_eq!(*back.to_bytes(), *bytes);
    assert_eq!(back.len(), 4);
    assert_eq!(back.root_key(), tree.root_key());
    for n in 0..bytes.len() {
        assert!(KeyTree::from_bytes(&bytes[..n]).is_err());
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(KeyTree::from_bytes(&long).is_err());
    // A claimed depth of 20 with no bitmap behind it allocates nothing.
    let mut big = bytes[..TREE_HEADER_LEN].to_vec();
    big[5] = 20;
    assert!(KeyTree::from_bytes(&big).is_err());
    big[5] = 21;
    assert!(KeyTree::from_bytes(&big).is_err());
    // Member count disagreeing with the bitmap.
    let mut b = bytes.to_vec();
    b[13] ^= 1;
    assert!(KeyTree::from_bytes(&b).is_err());
}

#[test]
fn member_path_roundtrip() {
    let mut rng = TestRng::new(4);
    let tree = KeyTree::with_members(6, e(1), &mut rng).unwrap();
    let p = tree.path(LeafIndex(4)).unwrap();
    let bytes = p.to_bytes();
    let back = MemberPath::from_bytes(&bytes).unwrap();
    assert_eq!(back.root_key(), p.root_key());
    assert_eq!(back.leaf(), p.leaf());
    for n in 0..bytes.len() {
        assert!(MemberPath::from_bytes(&bytes[..n]).is_err());
    }
    assert!(tree.path(LeafIndex(6)).is_err());
    assert!(tree.path(LeafIndex(99)).is_err());
}

#[test]
fn epochs_must_increase() {
    let mut rng = TestRng::new(5);
    let mut tree = KeyTree::with_members(4, e(3), &mut rng).unwrap();
    let mut m = tree.path(LeafIndex(0)).unwrap();
    assert!(matches!(
        tree.remove_member(LeafIndex(1), e(3), &mut rng),
        Err(Error::StaleEpoch { .. })
    ));
    assert!(tree.add_member(e(2), &mut rng).is_err());
    let rekey = tree.remove_member(LeafIndex(1), e(4), &mut rng).unwrap();
    m.apply(&rekey).unwrap();
    assert!(matches!(m.apply(&rekey), Err(Error::StaleEpoch { .. })));
    assert!(matches!(
        tree.remove_member(LeafIndex(1), e(5), &mut rng),
        Err(Error::UnknownMember)
    ));
}

#[test]
fn growth_keeps_members_and_locks_out_the_past() {
    let mut rng = TestRng::new(6);
    let mut tree = KeyTree::new();
    let mut members: Vec<MemberPath> = Vec::new();
    for i in 1..=9u32 {
        let old_root = tree.root_key();
        let j = tree.add_member(e(i), &mut rng).unwrap();
        for m in &mut members {
            assert_eq!(m.apply_join(&j.join).unwrap(), tree.root_key().unwrap());
        }
        assert_ne!(Some(j.path.root_key().clone()), old_root);
        members.push(j.path);
    }
    assert_eq!(tree.depth(), 4);
    assert_eq!(tree.len(), 9);
    for m in &members {
        assert_eq!(m.root_key(), &tree.root_key().unwrap());
        let fresh = tree.path(m.leaf()).unwrap();
        assert!(m.keys().zip(fresh.keys()).all(|(a, b)| a == b));
    }
}

#[test]
fn batch_join_grows_several_levels() {
    let mut rng = TestRng::new(9);
    let mut tree = KeyTree::with_members(3, e(1), &mut rng).unwrap();
    let mut old: Vec<MemberPath> = tree.members().map(|l| tree.path(l).unwrap()).collect();
    let before = tree.root_key().unwrap();
    let join = tree.add_members(10, e(2), &mut rng).unwrap();
    assert_eq!(tree.depth(), 4);
    assert_eq!(tree.len(), 13);
    let want: Vec<u32> = (3..13).collect();
    assert_eq!(
        join.leaves().iter().map(|l| l.get()).collect::<Vec<_>>(),
        want
    );
    let join = TreeJoin::from_cbor(&join.to_cbor()).unwrap();
    for m in &mut old {
        assert_eq!(m.apply_join(&join).unwrap(), tree.root_key().unwrap());
        let truth = tree.path(m.leaf()).unwrap();
        assert!(m.keys().zip(truth.keys()).all(|(a, b)| a == b));
    }
    assert_ne!(tree.root_key().unwrap(), before);
    // A join in the same epoch is refused; an empty one too.
    assert!(matches!(
        tree.add_members(1, e(2), &mut rng),
        Err(Error::StaleEpoch { .. })
    ));
    assert!(tree.add_members(0, e(3), &mut rng).is_err());
    // Reuse of freed leaves, lowest first.
    tree.remove_member(LeafIndex(5), e(3), &mut rng).unwrap();
    tree.remove_member(LeafIndex(1), e(4), &mut rng).unwrap();
    let join = tree.add_members(3, e(5), &mut rng).unwrap();
    let got: Vec<u32> = join.leaves().iter().map(|l| l.get()).collect();
    assert_eq!(got, vec![1, 5, 13]);
    assert_eq!(tree.depth(), 4);
}

#[test]
fn secrets_do_not_debug_print() {
    let mut rng = TestRng::new(8);
    let tree = KeyTree::with_members(3, e(0), &mut rng).unwrap();
    let p = tree.path(LeafIndex(0)).unwrap();
    assert_eq!(format!("{:?}", p.root_key()), "Secret(..)");
    let key_hex: String = p
        .root_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key_dec = format!("{:?}", p.root_key().as_bytes());
    for s in [format!("{tree:?}"), format!("{p:?}")] {
        assert!(
            !s.contains(&key_hex[..8]) && !s.contains(&key_dec[..12]),
            "{s}"
        );
    }
}

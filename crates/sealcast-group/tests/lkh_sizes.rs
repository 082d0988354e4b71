#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! LKH rekey sizes and consistency: one eviction from groups of 2 … 100 000
//! members, then random join / evict sequences on small groups.

use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use rand_core::Rng;
use sealcast_core::ids::Epoch;
use sealcast_core::testrng::TestRng;
use sealcast_group::Error;
use sealcast_group::lkh::{KeyTree, LeafIndex, MemberPath, TreeJoin, TreeRekey};

fn ceil_log2(n: usize) -> usize {
    (usize::BITS - (n - 1).leading_zeros()) as usize
}

/// `count` distinct members of `0..n`, not `except` (all of them if n − 1 ≤ count).
fn sample(rng: &mut TestRng, n: usize, count: usize, except: u32) -> Vec<u32> {
    if n - 1 <= count {
        return (0..n as u32).filter(|p| *p != except).collect();
    }
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < count {
        let p = (rng.next_u64() % n as u64) as u32;
        if p != except {
            picked.insert(p);
        }
    }
    picked.into_iter().collect()
}

struct Row {
    n: usize,
    wrapped: usize,
    bytes: usize,
    max_unwraps: usize,
    checked: usize,
    build_ms: u128,
}

fn evict_one(n: usize, seed: u64) -> Row {
    let mut rng = TestRng::new(seed);
    let t0 = Instant::now();
    let mut tree = KeyTree::with_members(n, Epoch::new(1), &mut rng).unwrap();
    let build_ms = t0.elapsed().as_millis();
    assert_eq!(tree.len(), n);
    assert_eq!(usize::from(tree.depth()), ceil_log2(n).max(1));

    let evicted = (rng.next_u64() % n as u64) as u32;
    let count = if n <= 1000 { n } else { 200 };
    let mut leaves = sample(&mut rng, n, count, evicted);
    // The evicted member's sibling meets its path lowest: the most unwraps.
    let sibling = evicted ^ 1;
    if (sibling as usize) < n && !leaves.contains(&sibling) {
        leaves.push(sibling);
    }
    let mut paths: Vec<MemberPath> = leaves
        .iter()
        .map(|p| tree.path(LeafIndex::new(*p)).unwrap())
        .collect();
    let mut gone = tree.path(LeafIndex::new(evicted)).unwrap();
    let old_root = tree.root_key().unwrap();

    let rekey = tree
        .remove_member(LeafIndex::new(evicted), Epoch::new(2), &mut rng)
        .unwrap();
    let bound = 2 * ceil_log2(n);
    assert!(
        rekey.wrapped().len() <= bound,
        "n = {n}: {} wrapped keys > {bound}",
        rekey.wrapped().len()
    );
    // The member sees the rekey as it crosses the wire.
    let wire = rekey.to_cbor();
    assert_eq!(wire.len(), rekey.encoded_len());
    let rekey = TreeRekey::from_cbor(&wire).unwrap();

    let new_root = tree.root_key().unwrap();
    assert_ne!(new_root, old_root);
    let mut max_unwraps = 0;
    for m in &mut paths {
        let out = m.apply(&rekey).unwrap();
        assert_eq!(out.root, new_root, "n = {n}, leaf {:?}", m.leaf());
        assert!(out.unwraps >= 1 && out.unwraps <= ceil_log2(n));
        max_unwraps = max_unwraps.max(out.unwraps);
    }
    assert_eq!(gone.apply(&rekey).unwrap_err(), Error::NotAMember);
    assert!(!tree.is_member(LeafIndex::new(evicted)));
    Row {
        n,
        wrapped: rekey.wrapped().len(),
        bytes: rekey.encoded_len(),
        max_unwraps,
        checked: paths.len(),
        build_ms,
    }
}

#[test]
fn eviction_sizes() {
    let ns = [2, 3, 4, 5, 7, 8, 9, 100, 1_000, 10_000, 100_000];
    let mut rows = Vec::new();
    for (i, n) in ns.into_iter().enumerate() {
        rows.push(evict_one(n, 0x5eed + i as u64));
    }
    println!();
    println!(
        "{:>8} | {:>12} | {:>13} | {:>11} | {:>13} | {:>8} | {:>8}",
        "n", "wrapped keys", "message bytes", "max unwraps", "2*ceil(log2n)", "checked", "build ms"
    );
    for r in &rows {
        println!(
            "{:>8} | {:>12} | {:>13} | {:>11} | {:>13} | {:>8} | {:>8}",
            r.n,
            r.wrapped,
            r.bytes,
            r.max_unwraps,
            2 * ceil_log2(r.n),
            r.checked,
            r.build_ms
        );
    }
}

#[test]
fn successive_evictions_then_joins_in_a_large_tree() {
    let mut rng = TestRng::new(42);
    let n = 10_000;
    let mut tree = KeyTree::with_members(n, Epoch::new(1), &mut rng).unwrap();
    let watched = sample(&mut rng, n, 50, u32::MAX);
    let mut paths: Vec<MemberPath> = watched
        .iter()
        .map(|p| tree.path(LeafIndex::new(*p)).unwrap())
        .collect();
    let mut epoch = 1;
    // Evict 20 members that are not watched, then 20 joins reuse the seats.
    let mut evicted = 0;
    while evicted < 20 {
        let leaf = (rng.next_u64() % n as u64) as u32;
        if watched.contains(&leaf) || !tree.is_member(LeafIndex::new(leaf)) {
            continue;
        }
        epoch += 1;
        let rekey = tree
            .remove_member(LeafIndex::new(leaf), Epoch::new(epoch), &mut rng)
            .unwrap();
        for m in &mut paths {
            assert_eq!(m.apply(&rekey).unwrap().root, tree.root_key().unwrap());
        }
        evicted += 1;
    }
    for _ in 0..20 {
        epoch += 1;
        let j = tree.add_member(Epoch::new(epoch), &mut rng).unwrap();
        let join = TreeJoin::from_cbor(&j.join.to_cbor()).unwrap();
        for m in &mut paths {
            assert_eq!(m.apply_join(&join).unwrap(), tree.root_key().unwrap());
        }
        assert_eq!(j.path.root_key(), &tree.root_key().unwrap());
    }
    assert_eq!(tree.len(), n);
    assert_eq!(usize::from(tree.depth()), ceil_log2(n));
}

#[derive(Clone, Debug)]
enum Op {
    Join(usize),
    Evict(u32),
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..5).prop_map(Op::Join),
        3 => any::<u32>().prop_map(Op::Evict),
        1 => Just(Op::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random joins, evictions and store round trips: every current member
    /// always holds exactly the manager's path keys and root, evicted members
    /// are locked out, sizes stay within the bounds.
    #[test]
    fn joins_and_evictions_stay_consistent(
        initial in 0usize..10,
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut rng = TestRng::new(seed);
        let mut tree = KeyTree::with_members(initial, Epoch::new(0), &mut rng).unwrap();
        let mut members: BTreeMap<u32, MemberPath> = tree
            .members()
            .map(|l| (l.get(), tree.path(l).unwrap()))
            .collect();
        let mut epoch = 0u32;
        for op in ops {
            epoch += 1;
            match op {
                Op::Join(count) => {
                    let old_root = tree.root_key();
                    let join = tree.add_members(count, Epoch::new(epoch), &mut rng).unwrap();
                    prop_assert_eq!(join.leaves().len(), count);
                    let join = TreeJoin::from_cbor(&join.to_cbor()).unwrap();
                    for m in members.values_mut() {
                        prop_assert_eq!(m.apply_join(&join).unwrap(), tree.root_key().unwrap());
                    }
                    for leaf in join.leaves() {
                        prop_assert!(!members.contains_key(&leaf.get()));
                        let path = tree.path(*leaf).unwrap();
                        // The newcomers' root is not the one before they joined.
                        prop_assert_ne!(Some(path.root_key().clone()), old_root.clone());
                        members.insert(leaf.get(), path);
                    }
                }
                Op::Evict(pick) => {
                    if members.is_empty() {
                        continue;
                    }
                    let n = members.len();
                    let leaf = *members.keys().nth(pick as usize % n).unwrap();
                    let mut gone = members.remove(&leaf).unwrap();
                    let rekey = tree
                        .remove_member(LeafIndex::new(leaf), Epoch::new(epoch), &mut rng)
                        .unwrap();
                    let rekey = TreeRekey::from_cbor(&rekey.to_cbor()).unwrap();
                    let depth = usize::from(tree.depth());
                    prop_assert!(rekey.wrapped().len() < 2 * depth);
                    // Capacity never shrinks: the 2⌈log2 n⌉ bound holds while the
                    // tree is as small as the membership allows (n > capacity / 2).
                    if n > 1 && depth == ceil_log2(n) {
                        prop_assert!(rekey.wrapped().len() <= 2 * ceil_log2(n));
                    }
                    for m in members.values_mut() {
                        let out = m.apply(&rekey).unwrap();
                        prop_assert_eq!(&out.root, &tree.root_key().unwrap());
                        prop_assert!(out.unwraps <= depth);
                    }
                    if n > 1 {
                        prop_assert_eq!(gone.apply(&rekey).unwrap_err(), Error::NotAMember);
                    } else {
                        prop_assert!(tree.is_empty() && tree.root_key().is_none());
                    }
                }
                Op::Snapshot => {
                    let bytes = tree.to_bytes();
                    tree = KeyTree::from_bytes(&bytes).unwrap();
                    prop_assert_eq!(&*tree.to_bytes(), &*bytes);
                    for m in members.values_mut() {
                        *m = MemberPath::from_bytes(&m.to_bytes()).unwrap();
                    }
                }
            }
            prop_assert_eq!(tree.len(), members.len());
            for (leaf, m) in &members {
                let truth = tree.path(LeafIndex::new(*leaf)).unwrap();
                prop_assert_eq!(m.depth(), truth.depth());
                prop_assert!(m.keys().zip(truth.keys()).all(|(a, b)| a == b));
                prop_assert_eq!(m.root_key(), &tree.root_key().unwrap());
            }
        }
    }
}

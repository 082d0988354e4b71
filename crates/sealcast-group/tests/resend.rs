#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Re-sends to members that do not acknowledge (issue #12, item 4): with a
//! fleet offline, re-sends used to go out every 5 s for every member, for
//! ever. Now each member's re-sends back off (5 s, 10 s, 20 s … up to a
//! ceiling, spread ±25 % per member), one poll sends at most a set number,
//! and an acknowledgement resets the backoff. Driven on a virtual clock.

use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, GroupId, UnixMillis};
use sealcast_core::testrng::TestRng;
use sealcast_group::manager::{Destination, EntityKind, Manager, RekeyScheme, Role};
use sealcast_group::member::{Member, MemberEvent};

const T0: u64 = 1_700_000_000_000;

fn id(s: &str) -> EntityId {
    EntityId::new(s).unwrap()
}

/// A manager with `n` offline members in one tree group (deliveries sent at
/// T0, none acknowledged); the members' key state, for acknowledging later.
fn offline_fleet(n: usize) -> (Manager, Vec<Member>, TestRng) {
    let mut rng = TestRng::new(12);
    let cred = EntityCredential::generate(id("manager"), &mut rng);
    let manager_pub = cred.public();
    let mut manager = Manager::new(cred);
    let group = GroupId::new(b"meters").unwrap();
    manager
        .create_group(
            group.clone(),
            AeadAlg::A128Gcm,
            RekeyScheme::Tree,
            None,
            UnixMillis::new(T0),
            &mut rng,
        )
        .unwrap();
    let mut members = Vec::new();
    let mut joiners = Vec::new();
    for i in 0..n {
        let c = EntityCredential::generate(id(&format!("meter-{i}")), &mut rng);
        manager.enrol(c.public(), EntityKind::Device, None).unwrap();
        joiners.push((c.id().clone(), Role::Receiver));
        members.push(Member::new(c, manager_pub.clone()));
    }
    let out = manager
        .add_members(&group, &joiners, UnixMillis::new(T0), &mut rng)
        .unwrap();
    assert_eq!(out.len(), n, "one delivery per newcomer");
    (manager, members, rng)
}

/// Polls every second from T0 to T0 + `secs`; the times (s after T0) at
/// which `member` was re-sent its delivery.
fn resend_times(manager: &mut Manager, rng: &mut TestRng, secs: u64, member: &str) -> Vec<u64> {
    let mut at = Vec::new();
    for s in 1..=secs {
        let out = manager
            .poll_resend(UnixMillis::new(T0 + s * 1000), rng)
            .unwrap();
        if out
            .iter()
            .any(|o| matches!(&o.to, Destination::Member { member: m, .. } if m.as_str() == member))
        {
            at.push(s);
        }
    }
    at
}

#[test]
fn re_sends_back_off_per_member_up_to_a_ceiling() {
    let (mut manager, _, mut rng) = offline_fleet(3);
    manager.set_resend_limits(60_000, 1_000);
    let at = resend_times(&mut manager, &mut rng, 600, "meter-0");
    // The old schedule re-sent every 5 s: 120 times in 10 minutes.
    assert!(at.len() <= 12, "{} re-sends in 10 min: {at:?}", at.len());
    assert!(at.len() >= 8, "{at:?}");
    assert_eq!(
        at[0], 5,
        "the first re-send after the retry interval: {at:?}"
    );
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Growing gaps (±25 % spread), never beyond the ceiling (plus spread).
    assert!(gaps.iter().all(|g| *g <= 76), "{gaps:?}");
    assert!(gaps.last().unwrap() >= &45, "{gaps:?}");
}

#[test]
fn one_poll_sends_at_most_its_limit_and_starves_no_one() {
    let (mut manager, _, mut rng) = offline_fleet(50);
    manager.set_resend_limits(600_000, 20);
    let mut sent_to = std::collections::BTreeSet::new();
    for s in [5u64, 6, 7] {
        let out = manager
            .poll_resend(UnixMillis::new(T0 + s * 1000), &mut rng)
            .unwrap();
        assert!(out.len() <= 20, "{} in one poll", out.len());
        for o in out {
            if let Destination::Member { member, .. } = o.to {
                sent_to.insert(member);
            }
        }
    }
    assert_eq!(
        sent_to.len(),
        50,
        "every member got its re-send within three polls"
    );
}

#[test]
fn an_acknowledgement_resets_the_backoff() {
    let (mut manager, mut members, mut rng) = offline_fleet(1);
    manager.set_resend_limits(600_000, 1_000);
    let at = resend_times(&mut manager, &mut rng, 100, "meter-0");
    assert!(at.len() >= 3, "{at:?}");
    // The member comes back: it pulls, installs and acknowledges.
    let group = GroupId::new(b"meters").unwrap();
    let pull = members[0].pull_request(&group, 1).unwrap();
    let answer = manager
        .handle_pull(&pull, UnixMillis::new(T0 + 101_000), &mut rng)
        .unwrap();
    let ack = match members[0]
        .handle_delivery(answer.kind, &answer.bytes)
        .unwrap()
    {
        MemberEvent::Installed { ack, .. } | MemberEvent::AlreadyCurrent { ack, .. } => ack,
    };
    manager.handle_ack(&ack).unwrap();
    // Nothing more is due for it; after a rekey it is re-sent on the short
    // interval again, not on the backed-off one.
    assert!(
        manager
            .poll_resend(UnixMillis::new(T0 + 400_000), &mut rng)
            .unwrap()
            .is_empty()
    );
    manager
        .rekey(&group, UnixMillis::new(T0 + 400_000), &mut rng)
        .unwrap();
    let out = manager
        .poll_resend(UnixMillis::new(T0 + 405_000), &mut rng)
        .unwrap();
    assert_eq!(out.len(), 1, "re-sent 5 s after the rekey");
}

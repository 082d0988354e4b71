//! The attacks of the fire-safety demo, each through the real deployment:
//! a forged command, a replay, a command re-wrapped into another group, and
//! an evicted door trying to follow a command sent after its eviction.

use super::*;

/// What the attacks share: the tap (subscribed to the door topics on MQTT,
/// joined to the group address on CoAP; it publishes where everyone does),
/// the door group's key material mallory holds, and the gateway's place in
/// it.
struct Attacker {
    tap: Link,
    tap_id: EntityId,
    tap_inbox: Inbox,
    door_topic: String,
    ext_topic: String,
    doors_material: GroupKeyMaterial,
    gw_signer: AuthorizedSigner,
}

impl Attacker {
    /// Publishes `bytes` as a command of `group` where every device can
    /// get it: through the tap on MQTT and CoAP; on oneM2M through the
    /// group's fan-out with `X-M2M-Origin` claiming the gateway, which ACME
    /// accepts — so what refuses it is sealcast's cryptography, not the
    /// originator check.
    async fn inject(&self, d: &Deployment, group: &GroupId, bytes: Vec<u8>) -> Result<()> {
        match &d.link {
            LinkConfig::OneM2m(cse) => {
                let target = d.topics.group(group, GroupChannel::Command);
                let gateway_ae = sealcast_onem2m::ae_id(&d.gateway)?;
                sealcast_node::link::onem2m::publish_group_as(
                    cse,
                    &gateway_ae,
                    group,
                    &target,
                    &bytes,
                )
                .await?;
                Ok(())
            }
            _ => {
                self.tap
                    .publish_group(group, GroupChannel::Command, bytes)
                    .await
            }
        }
    }
}

/// Runs the four attacks; each adds its checks to `report`.
pub(super) async fn run(
    d: &mut Deployment,
    report: &mut DemoReport,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let tap_id = d.tap_cred.id().clone();
    let (tap, tap_inbox) = Link::connect(
        &tap_id,
        &d.on_bearer(member_of(&d.gateway, &d.gw_pub, &d.tap_cred)?),
        d.topics.clone(),
        Interest {
            filters: vec![d.topics.group_filter(&d.g.doors)],
            multicast: true,
            ..Interest::default()
        },
    )
    .await?;
    if d.bearer {
        let mut entitled = d.bearer_devices.clone();
        entitled.push(d.tap_cred.public());
        d.bearer_control.set_devices(entitled).await?;
    }
    let mallory = d.node(&d.mallory)?;
    let doors_material = mallory
        .material(&d.g.doors)
        .await?
        .ok_or_else(|| Error::Runtime("mallory holds no door key".into()))?;
    let gw_signer = doors_material
        .signers()
        .iter()
        .find(|s| s.entity == d.gateway)
        .cloned()
        .ok_or_else(|| Error::Runtime("gateway is not a door signer".into()))?;
    let mut a = Attacker {
        tap,
        tap_id: tap_id.clone(),
        tap_inbox,
        door_topic: d.topics.group(&d.g.doors, GroupChannel::Command),
        ext_topic: d.topics.group(&d.g.exts, GroupChannel::Command),
        doors_material,
        gw_signer,
    };
    forged_command(d, &a, report, log).await?;
    let unlock = replay(d, &mut a, report, log).await?;
    rewrapped(d, &a, &unlock, report, log).await?;
    evicted_door(d, report, log).await?;
    a.tap.close(Duration::from_secs(1)).await;
    Ok(())
}

const BAD_SIG: &str = "signature";

/// 1. Forged command: mallory, an insider of the door group, seals "open
///    all" under the gateway's sender key and signs it with its own key.
async fn forged_command(
    d: &mut Deployment,
    a: &Attacker,
    report: &mut DemoReport,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let m = &a.doors_material;
    let mallory_key = ed25519_dalek::SigningKey::generate(&mut d.rng);
    let fake = GroupKeyMaterial::new(
        d.g.doors.clone(),
        m.epoch(),
        m.alg(),
        m.master_secret(),
        m.master_salt(),
        vec![AuthorizedSigner {
            sender_id: a.gw_signer.sender_id.clone(),
            entity: d.mallory.clone(),
            verifying_key: mallory_key.verifying_key(),
        }],
        None,
    )?;
    let forged = seal_broadcast(
        &GroupContext::new(&fake)?,
        &d.mallory,
        &mallory_key,
        SeqNum::new(500)?,
        now(),
        &a.door_topic,
        b"open all",
    )?;
    a.inject(d, &d.g.doors, forged).await?;
    let refused = d.doors_that(|e, g| rejected_with(e, g, BAD_SIG), log).await;
    report.checks.push(Check {
        what: "attack 1, forged command: doors that refused it".into(),
        expected: d.doors.len(),
        observed: refused,
    });
    Ok(())
}

/// 2. Replay: a genuine "unlock" captured off the transport and published
///    again. The tap subscribed after the first unlock went out, so it asks
///    the gateway for one more, captures it, lets it execute, then replays
///    it. Returns the captured command (for the re-wrap).
async fn replay(
    d: &mut Deployment,
    a: &mut Attacker,
    report: &mut DemoReport,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<u8>> {
    let mut unlock = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    d.node(&d.gateway)?
        .send(&d.g.doors, GroupChannel::Command, b"unlock")
        .await?;
    // On oneM2M nothing reaches a tap that is not a member: the attacker
    // reads a door's container as the CSE's administrator instead, after
    // the command went out (below).
    let on_onem2m = matches!(d.link, LinkConfig::OneM2m(_));
    while !on_onem2m
        && let Ok(Some(m)) = tokio::time::timeout_at(deadline, a.tap_inbox.next_message()).await
    {
        let payload = m.payload.clone();
        let on_door_topic = m.target == a.door_topic;
        m.ack.ack().await;
        if on_door_topic
            && peek_broadcast(&payload)
                .is_ok_and(|h| h.sender_id == a.gw_signer.sender_id && h.seq.get() < 500)
        {
            unlock = Some(payload);
            break;
        }
    }
    // Both unlocks executed by every door before the replay goes out.
    let nd = d.doors.len();
    let (dl, dg) = (d.door_set(), d.g.doors.clone());
    d.events
        .until(
            d.wait,
            |e| dl.contains(&e.who) && executed(e, &dg, b"unlock"),
            2 * nd,
            log,
        )
        .await;
    d.events.settle(Duration::from_millis(100), log).await;
    if let LinkConfig::OneM2m(cse) = &d.link {
        unlock = Some(sealcast_node::link::Bytes::from(
            admin_capture(d, cse, a, report).await?,
        ));
    }
    let unlock =
        unlock.ok_or_else(|| Error::Runtime("did not capture an unlock command".into()))?;
    if let LinkConfig::OneM2m(cse) = &d.link {
        // The tap's own AE posts it: the CSE's ACPs refuse it at every
        // member (only the senders of a member's groups and the manager
        // may create in its group container).
        let tap_ae = sealcast_onem2m::ae_id(&a.tap_id)?;
        let codes = sealcast_node::link::onem2m::publish_group_as(
            cse,
            &tap_ae,
            &d.g.doors,
            &a.door_topic,
            &unlock,
        )
        .await?;
        report.checks.push(Check {
            what: "oneM2M: \"unlock\" posted by mallory's own AE: refused by the CSE's ACPs (4103)"
                .into(),
            expected: 1,
            observed: usize::from(!codes.is_empty() && codes.iter().all(|c| *c == 4103)),
        });
        // The manager's AE may create there: posted as the manager, it
        // passes the CSE and every door refuses an originator that is not
        // the signer, before any replay check.
        let manager_ae = sealcast_onem2m::ae_id(&EntityId::new(crate::DEMO_MANAGER)?)?;
        sealcast_node::link::onem2m::publish_group_as(
            cse,
            &manager_ae,
            &d.g.doors,
            &a.door_topic,
            &unlock,
        )
        .await?;
        let refused = d
            .doors_that(|e, g| rejected_with(e, g, "impersonation"), log)
            .await;
        report.checks.push(Check {
            what: "oneM2M: \"unlock\" posted as the manager's AE: doors that refused the impersonation".into(),
            expected: nd,
            observed: refused,
        });
    }
    a.inject(d, &d.g.doors, unlock.to_vec()).await?;
    let refused = d
        .doors_that(|e, g| rejected_with(e, g, "replay"), log)
        .await;
    report.checks.push(Check {
        what: "attack 2, replayed \"unlock\": doors that refused it".into(),
        expected: nd,
        observed: refused,
    });
    Ok(unlock.to_vec())
}

/// oneM2M: the CSE's administrator (ACME's `CAdmin`, which its policy lets
/// read everything) reads the latest instance in the first door's group
/// container: the "unlock" just sent, as ciphertext only.
async fn admin_capture(
    d: &Deployment,
    cse: &sealcast_node::link::OneM2mLinkConfig,
    a: &Attacker,
    report: &mut DemoReport,
) -> Result<Vec<u8>> {
    let door = d
        .doors
        .first()
        .ok_or_else(|| Error::Runtime("no door".into()))?;
    let (target, content) = sealcast_node::link::onem2m::read_latest(
        cse,
        "CAdmin",
        door,
        sealcast_onem2m::GROUP_CONTAINER,
    )
    .await?;
    let plaintext_visible = content.windows(b"unlock".len()).any(|w| w == b"unlock");
    let from_gateway = peek_broadcast(&content)
        .is_ok_and(|h| h.sender_id == a.gw_signer.sender_id && h.seq.get() < 500);
    report.checks.push(Check {
        what: "oneM2M: the CSE admin reading a door's container finds the gateway's command, as ciphertext only".into(),
        expected: 1,
        observed: usize::from(target == a.door_topic && from_gateway && !plaintext_visible),
    });
    Ok(content)
}

/// 3. Re-wrap: mallory, a member of both groups, decrypts the genuine
///    "unlock" and re-encrypts the gateway-signed inner object for the
///    extinguisher group under a fresh sequence number.
async fn rewrapped(
    d: &mut Deployment,
    a: &Attacker,
    unlock: &[u8],
    report: &mut DemoReport,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let ext_material = d
        .node(&d.mallory)?
        .material(&d.g.exts)
        .await?
        .ok_or_else(|| Error::Runtime("mallory holds no extinguisher key".into()))?;
    let rewrapped = rewrap(
        unlock,
        &a.doors_material,
        &a.door_topic,
        &ext_material,
        &d.gateway,
        &a.ext_topic,
    )?;
    a.inject(d, &d.g.exts, rewrapped).await?;
    let ne = d.exts.len();
    let el: BTreeSet<&EntityId> = d.exts.iter().collect();
    let eg = &d.g.exts;
    d.events
        .until(
            d.wait,
            |e| el.contains(&e.who) && rejected_with(e, eg, BAD_SIG),
            ne,
            log,
        )
        .await;
    d.events.settle(Duration::from_millis(100), log).await;
    report.checks.push(Check {
        what: "attack 3, \"unlock\" re-wrapped for extinguishers: extinguishers that refused it"
            .into(),
        expected: ne,
        observed: d
            .events
            .count(|e| el.contains(&e.who) && rejected_with(e, eg, BAD_SIG)),
    });
    report.checks.push(Check {
        what: "extinguishers that executed \"unlock\" (must be none)".into(),
        expected: 0,
        observed: d.events.count(|e| executed(e, eg, b"unlock")),
    });
    if let LinkConfig::OneM2m(cse) = &d.link {
        // The genuine "unlock", unchanged, posted into the extinguishers'
        // containers through their <group>: bound to the door group, it
        // opens for nobody there.
        let gateway_ae = sealcast_onem2m::ae_id(&d.gateway)?;
        sealcast_node::link::onem2m::publish_group_as(
            cse,
            &gateway_ae,
            &d.g.exts,
            &a.door_topic,
            unlock,
        )
        .await?;
        let dg = d.g.doors.clone();
        let not_member = |e: &Event| {
            el.contains(&e.who) && matches!(&e.kind, EventKind::NotMember { group } if *group == dg)
        };
        d.events.until(d.wait, not_member, ne, log).await;
        d.events.settle(Duration::from_millis(100), log).await;
        report.checks.push(Check {
            what: "oneM2M: \"unlock\" re-posted into the extinguishers' containers: extinguishers that refused it".into(),
            expected: ne,
            observed: d.events.count(not_member),
        });
    }
    Ok(())
}

/// 4. Eviction: the last door is evicted (tree rekey: one broadcast); a
///    command sent afterwards is for everyone but it.
async fn evicted_door(
    d: &mut Deployment,
    report: &mut DemoReport,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let evicted = d
        .doors
        .last()
        .cloned()
        .ok_or_else(|| Error::Runtime("no doors".into()))?;
    d.manager.evict(d.g.doors.clone(), evicted.clone()).await?;
    d.manager.wait_converged(&d.g.doors, d.wait).await?;
    d.events.settle(Duration::from_millis(200), log).await;
    d.node(&d.gateway)?
        .send(&d.g.doors, GroupChannel::Command, b"lock")
        .await?;
    let nd = d.doors.len();
    let (dl, dg) = (d.door_set(), d.g.doors.clone());
    d.events
        .until(
            d.wait,
            |e| dl.contains(&e.who) && executed(e, &dg, b"lock"),
            nd - 1,
            log,
        )
        .await;
    d.events.settle(Duration::from_millis(300), log).await;
    report.checks.push(Check {
        what: "attack 4, evicted door: doors that executed \"lock\" (all but the evicted one)"
            .into(),
        expected: nd - 1,
        observed: d
            .events
            .count(|e| dl.contains(&e.who) && executed(e, &dg, b"lock")),
    });
    report.checks.push(Check {
        what: "attack 4, evicted door: times it executed \"lock\" (must be none)".into(),
        expected: 0,
        observed: d
            .events
            .count(|e| e.who == evicted && executed(e, &dg, b"lock")),
    });
    Ok(())
}

impl Deployment {
    /// A running node by id.
    fn node(&self, id: &EntityId) -> Result<NodeHandle> {
        self.nodes
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Runtime(format!("no node {id}")))
    }

    /// The doors, as a set.
    fn door_set(&self) -> BTreeSet<EntityId> {
        self.doors.iter().cloned().collect()
    }

    /// Waits until every door showed an event that `what` (given the door
    /// group) accepts, then counts those events.
    async fn doors_that(
        &mut self,
        what: impl Fn(&Event, &GroupId) -> bool,
        log: &mut dyn FnMut(&str),
    ) -> usize {
        let (dl, dg) = (self.door_set(), self.g.doors.clone());
        self.events
            .until(
                self.wait,
                |e| dl.contains(&e.who) && what(e, &dg),
                dl.len(),
                log,
            )
            .await;
        self.events.settle(Duration::from_millis(100), log).await;
        self.events.count(|e| dl.contains(&e.who) && what(e, &dg))
    }
}

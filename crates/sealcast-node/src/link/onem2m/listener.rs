//! The notification listener: an AE's point of access, the checks made
//! before anything is opened, and the answer once the runtime is done.

use super::*;

/// What the notification listener knows.
pub(super) struct Listener {
    /// The manager's: who was heard from (see [`OneM2mLink::heard`]).
    pub(super) heard: Option<Arc<Mutex<BTreeSet<EntityId>>>>,
    pub(super) id: EntityId,
    pub(super) manager: EntityId,
    pub(super) topics: TopicScheme,
    /// Resource id → name of this AE's containers.
    pub(super) containers: Arc<Mutex<BTreeMap<String, &'static str>>>,
    pub(super) tx: mpsc::Sender<Incoming>,
}

pub(super) async fn serve(listener: TcpListener, ctx: Arc<Listener>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                debug!(entity = %ctx.id, error = %e, "notification listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, std::convert::Infallible>(notified(&ctx, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(rsc: u16, ri: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    if rsc >= 4000 {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    let headers = resp.headers_mut();
    if let Ok(v) = rsc.to_string().parse() {
        headers.insert("X-M2M-RSC", v);
    }
    if let Ok(v) = ri.parse() {
        headers.insert("X-M2M-RI", v);
    }
    resp
}

/// Handles one notification: checks it, hands it to the runtime, and
/// answers once the runtime acknowledged it.
async fn notified(ctx: &Listener, req: Request<HttpBody>) -> Response<Full<Bytes>> {
    let ri = req
        .headers()
        .get("X-M2M-RI")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ser = req
        .headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .and_then(Serialization::of_content_type)
        .unwrap_or_default();
    let Ok(body) = Limited::new(req.into_body(), MAX_PRIMITIVE).collect().await else {
        return answer(4000, &ri);
    };
    answer(handle(ctx, ser.decode(&body.to_bytes())).await, &ri)
}

/// Handles one notification's content (either binding): checks it, hands it
/// to the runtime, and returns the response status code once the runtime
/// acknowledged it.
pub(super) async fn handle(
    ctx: &Listener,
    content: core::result::Result<serde_json::Value, sealcast_onem2m::Error>,
) -> u16 {
    let parsed = content.and_then(|v| primitive::parse_notification(&v));
    let (subscription, instance) = match parsed {
        Ok(Notification::Verification { .. }) => return 2000,
        Ok(Notification::Deleted { subscription }) => {
            warn!(entity = %ctx.id, %subscription, "the CSE deleted a subscription of ours; it is created again within seconds if the AE is gone too, else restart this node");
            return 2000;
        }
        Ok(Notification::Created {
            subscription,
            instance,
        }) => (subscription, instance),
        Ok(_) => return 2000,
        Err(e) => {
            debug!(entity = %ctx.id, error = %e, "notification refused");
            return 4000;
        }
    };
    match check(ctx, &instance) {
        Ok(origin) => {
            if let Some(heard) = &ctx.heard {
                let mut heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
                if heard.len() >= HEARD_MAX {
                    heard.clear();
                }
                heard.insert(origin.clone());
            }
            let (done, answered) = oneshot::channel();
            let incoming = Incoming {
                target: instance.target,
                payload: Bytes::from(instance.content),
                origin: Some(origin),
                ack: crate::link::Ack(crate::link::AckInner::OneM2m(OneM2mAck(done))),
            };
            if ctx.tx.try_send(incoming).is_err() {
                warn!(entity = %ctx.id, "inbox full; notification answered 5000");
                return 5000;
            }
            // The answer waits for the runtime (or 30 s): the CSE sees the
            // message processed, as an MQTT broker sees the PUBACK.
            let _ = tokio::time::timeout(Duration::from_secs(30), answered).await;
            2000
        }
        Err(why) => {
            // Rate-limited: a flood of bad instances must not become a
            // flood of log lines.
            static REFUSED: Mutex<crate::runtime::WarnLimiter> = Mutex::new(
                crate::runtime::WarnLimiter::new(crate::runtime::REFUSED_WARN_EVERY),
            );
            let allowed = REFUSED.lock().ok().and_then(|mut l| l.allow());
            let creator = instance.creator.as_deref().unwrap_or("none");
            match allowed {
                Some(held_back) => {
                    warn!(entity = %ctx.id, target = %instance.target, creator, %subscription, why, held_back, "notification refused although the CSE accepted it")
                }
                None => {
                    debug!(entity = %ctx.id, target = %instance.target, creator, why, "notification refused")
                }
            }
            2000
        }
    }
}

/// The checks the adapter can make before the runtime opens anything: the
/// instance is in one of our containers, its target is a sealcast target
/// of that container's kind, and its creator is an entity — the one the
/// target names, where it names the sender.
fn check(
    ctx: &Listener,
    instance: &sealcast_onem2m::ContentInstance,
) -> core::result::Result<EntityId, &'static str> {
    let container = *ctx
        .containers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(instance.parent.rsplit('/').next().unwrap_or_default())
        .ok_or("not in a container of this AE")?;
    let origin = instance
        .creator
        .as_deref()
        .and_then(sealcast_onem2m::entity_of_originator)
        .ok_or("no sealcast originator (cr) recorded by the CSE")?;
    let topic = ctx
        .topics
        .parse(&instance.target)
        .map_err(|_| "label is not a sealcast target")?;
    match (&topic, container) {
        (Topic::Group { .. }, GROUP_CONTAINER) => Ok(origin),
        (Topic::Group { .. }, _) => Err("a group target outside the group container"),
        (_, GROUP_CONTAINER) => Err("a per-entity target in the group container"),
        (
            Topic::Device {
                device,
                channel: DeviceChannel::Ack | DeviceChannel::Pull,
            },
            _,
        ) if *device != origin => {
            Err("originator is not the device the target names (AE impersonation)")
        }
        (
            Topic::Device {
                channel: DeviceChannel::Delivery,
                ..
            },
            _,
        ) if origin != ctx.manager => {
            Err("a key delivery not created by the manager (AE impersonation)")
        }
        _ => Ok(origin),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::target::{AgentChannel, GroupChannel};
    use sealcast_onem2m::ContentInstance;

    fn listener() -> Listener {
        let (tx, _rx) = mpsc::channel(1);
        let containers = BTreeMap::from([
            ("cntInbox".to_owned(), INBOX_CONTAINER),
            ("cntGrp".to_owned(), GROUP_CONTAINER),
        ]);
        Listener {
            heard: None,
            id: EntityId::new("manager").unwrap(),
            manager: EntityId::new("manager").unwrap(),
            topics: TopicScheme::new(),
            containers: Arc::new(Mutex::new(containers)),
            tx,
        }
    }

    fn instance(parent: &str, target: String, creator: Option<&str>) -> ContentInstance {
        ContentInstance {
            content: vec![0xd0],
            target,
            creator: creator.map(str::to_owned),
            parent: parent.to_owned(),
        }
    }

    /// The adapter's checks before anything is opened: the container, the
    /// label, and the originator where the target names the sender.
    #[test]
    fn notifications_are_checked_against_container_target_and_originator() {
        let ctx = listener();
        let t = TopicScheme::new();
        let door = EntityId::new("door-1").unwrap();
        let group = GroupId::new(b"doors").unwrap();
        let ack = t.device(&door, DeviceChannel::Ack);
        let delivery = t.device(&door, DeviceChannel::Delivery);
        let cmd = t.group(&group, GroupChannel::Command);
        let report = t.agent(&door, AgentChannel::Report);
        let ok = |i: ContentInstance| check(&ctx, &i);
        // Accepted: the originator as every form of AE-ID.
        for cr in [
            "Cdoor-1",
            "/id-mn/Cdoor-1",
            "//sealcast.example/id-mn/Cdoor-1",
        ] {
            assert_eq!(
                ok(instance("cntInbox", ack.clone(), Some(cr))),
                Ok(door.clone())
            );
        }
        assert!(ok(instance("cntGrp", cmd.clone(), Some("Cgateway"))).is_ok());
        assert!(ok(instance("cntInbox", report.clone(), Some("Cmeter-1"))).is_ok());
        assert!(
            ok(instance(
                "/id-in/cse-in/Cmanager/cntInbox",
                ack.clone(),
                Some("Cdoor-1")
            ))
            .is_ok()
        );
        // Refused, each for its reason.
        for (i, why) in [
            (
                instance("cntOther", ack.clone(), Some("Cdoor-1")),
                "not in a container",
            ),
            (
                instance("cntInbox", ack.clone(), None),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", ack.clone(), Some("CAdmin/x")),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", ack.clone(), Some("Smanager")),
                "no sealcast originator",
            ),
            (
                instance("cntInbox", "not/a/target".into(), Some("Cdoor-1")),
                "label",
            ),
            (
                instance("cntInbox", cmd.clone(), Some("Cgateway")),
                "group target outside",
            ),
            (
                instance("cntGrp", ack.clone(), Some("Cdoor-1")),
                "per-entity target in the group",
            ),
            (
                instance("cntInbox", ack.clone(), Some("Cdoor-2")),
                "impersonation",
            ),
            (
                instance("cntInbox", delivery.clone(), Some("Cgateway")),
                "impersonation",
            ),
        ] {
            let got = ok(i.clone());
            assert!(got.is_err_and(|e| e.contains(why)), "{i:?}: wanted {why}");
        }
        // A key delivery from the manager passes.
        assert!(ok(instance("cntInbox", delivery, Some("/id-in/Cmanager"))).is_ok());
    }
}

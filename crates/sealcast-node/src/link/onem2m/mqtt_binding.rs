//! The MQTT binding (TS-0010): a request primitive published on
//! `/oneM2M/req/<originator>/<cse-id>/<json|cbor>`, its response on
//! `/oneM2M/resp/<originator>/<cse-id>/…` matched by `rqi`; a
//! notification arrives as a request on `/oneM2M/req/<cse-id>/<AE-ID>/…` and
//! is answered on `/oneM2M/resp/<cse-id>/<AE-ID>/…` once the runtime
//! processed it. A CSE on this binding is named
//! `mqtt://<broker>:<port>/<cse-id>/<cse-name>`; the AE's point of access is
//! the broker (`mqtt://<broker>:<port>`).

use std::collections::HashMap;

use sealcast_mqtt::{MqttClient, MqttConfig, Subscription, TopicFilter};

use super::http::REQUEST_TIMEOUT;
use super::*;

/// One originator's connection to the broker of an MQTT-bound CSE.
pub(super) struct MqttWire {
    client: MqttClient,
    origin: String,
    serialization: Serialization,
    pending: Mutex<HashMap<String, oneshot::Sender<(u16, serde_json::Value)>>>,
    /// Where notifications go (set once the AE's listener exists).
    listener: Arc<Mutex<Option<Arc<Listener>>>>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for MqttWire {
    fn drop(&mut self) {
        if let Some(task) = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// `mqtt://host:port/<cse-id>` → (`mqtt://host:port`, `<cse-id>`).
pub(super) fn split_base(base: &str) -> Result<(&str, &str)> {
    let rest = base
        .strip_prefix("mqtt://")
        .ok_or_else(|| Error::Runtime(format!("{base} is not an mqtt:// CSE")))?;
    let slash = rest
        .find('/')
        .ok_or_else(|| Error::Runtime(format!("{base} names no CSE-ID")))?;
    let (broker_len, cse_id) = ("mqtt://".len() + slash, &rest[slash + 1..]);
    if cse_id.is_empty() || cse_id.contains('/') {
        return Err(Error::Runtime(format!("{base} names no single CSE-ID")));
    }
    Ok((&base[..broker_len], cse_id))
}

/// A request path (`/~/<cse-id>/…`, `/_/<sp-id>/…`, `/<name>`) as the
/// primitive's `to` (`/<cse-id>/…`, `//<sp-id>/…`, `<name>`).
fn to_of(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/~/") {
        format!("/{rest}")
    } else if let Some(rest) = path.strip_prefix("/_/") {
        format!("//{rest}")
    } else {
        path.trim_start_matches('/').to_owned()
    }
}

fn operation(method: &Method) -> u8 {
    match *method {
        Method::POST => 1,
        Method::GET => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        _ => 2,
    }
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

impl MqttWire {
    /// Connects `origin` to `broker`, subscribed to its responses and
    /// notifications.
    pub(super) async fn connect(
        broker: &str,
        origin: &str,
        serialization: Serialization,
        listener: Arc<Mutex<Option<Arc<Listener>>>>,
    ) -> Result<Arc<Self>> {
        let client_id = format!(
            "{origin}-{}-{}",
            std::process::id(),
            CONNECTIONS.fetch_add(1, Ordering::Relaxed)
        );
        let filter = |f: String| {
            TopicFilter::new(&f).map_err(|e| Error::Runtime(format!("oneM2M MQTT topic {f}: {e}")))
        };
        let config = MqttConfig::from_url(broker, client_id)?
            .with_subscription(filter(format!("/oneM2M/resp/{origin}/+/+"))?)
            .with_subscription(filter(format!("/oneM2M/req/+/{origin}/+"))?);
        let (client, sub) = MqttClient::connect(config)?;
        client.wait_subscribed(REQUEST_TIMEOUT).await?;
        let wire = Arc::new(Self {
            client,
            origin: origin.to_owned(),
            serialization,
            pending: Mutex::new(HashMap::new()),
            listener,
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read(Arc::downgrade(&wire), sub));
        *wire.reader.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(wire)
    }

    /// Sends one request primitive to the CSE of `base` and waits for its
    /// response.
    pub(super) async fn request(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        create: Option<Type>,
        content: Option<&serde_json::Value>,
        rqi: String,
    ) -> Result<(u16, serde_json::Value)> {
        let (_, cse_id) = split_base(base)?;
        let mut primitive = serde_json::json!({
            "op": operation(method),
            "to": to_of(path),
            "fr": self.origin,
            "rqi": rqi,
            "rvi": "4",
        });
        if let Some(ty) = create {
            primitive["ty"] = serde_json::json!(ty as u32);
        }
        if let Some(pc) = content {
            primitive["pc"] = pc.clone();
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rqi.clone(), tx);
        let ser = self.serialization;
        let topic = format!("/oneM2M/req/{}/{cse_id}/{}", self.origin, suffix(ser));
        let sent = self
            .client
            .publish(topic, Bytes::from(ser.encode(&primitive)))
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(REQUEST_TIMEOUT, rx).await,
            Err(e) => {
                self.forget(&rqi);
                return Err(e.into());
            }
        };
        self.forget(&rqi);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(Error::Runtime(format!(
                "the CSE {cse_id} did not answer over MQTT within {REQUEST_TIMEOUT:?} (is its MQTT binding on, on this broker?)"
            ))),
        }
    }

    fn forget(&self, rqi: &str) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(rqi);
    }
}

fn suffix(ser: Serialization) -> &'static str {
    match ser {
        Serialization::Json => "json",
        Serialization::Cbor => "cbor",
    }
}

/// Reads responses and notifications until the wire is gone.
async fn read(wire: std::sync::Weak<MqttWire>, mut sub: Subscription) {
    while let Some(m) = sub.next_message().await {
        let _ = m.ack.ack().await;
        let Some(wire) = wire.upgrade() else {
            return;
        };
        let levels: Vec<&str> = m.topic.split('/').collect();
        let [_, "oneM2M", kind, first, _second, ser] = levels.as_slice() else {
            continue;
        };
        let Some(ser) = Serialization::parse(ser) else {
            continue;
        };
        let Ok(value) = ser.decode(&m.payload) else {
            debug!(topic = %m.topic, "oneM2M MQTT message that does not decode dropped");
            continue;
        };
        let rqi = value
            .get("rqi")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match *kind {
            "resp" => {
                let rsc = value
                    .get("rsc")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(5000);
                let pc = value.get("pc").cloned().unwrap_or(serde_json::Value::Null);
                let waiting = wire
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&rqi);
                if let Some(tx) = waiting {
                    let _ = tx.send((rsc, pc));
                }
            }
            "req" => {
                // A notification: answered from a task of its own, once the
                // runtime processed it, so responses keep flowing meanwhile.
                let cse_id = (*first).to_owned();
                tokio::spawn(notify(wire, cse_id, ser, rqi, value));
            }
            _ => {}
        }
    }
}

async fn notify(
    wire: Arc<MqttWire>,
    cse_id: String,
    ser: Serialization,
    rqi: String,
    request: serde_json::Value,
) {
    let listener = wire
        .listener
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let rsc = match (
        listener,
        request.get("op").and_then(serde_json::Value::as_u64),
    ) {
        (Some(ctx), Some(5)) => {
            let pc = request
                .get("pc")
                .cloned()
                .ok_or(sealcast_onem2m::Error::Malformed("notification without pc"));
            super::listener::handle(&ctx, pc).await
        }
        (None, Some(5)) => 2000,
        _ => 4000,
    };
    let answer = serde_json::json!({
        "rsc": rsc,
        "rqi": rqi,
        "rvi": "4",
        "fr": wire.origin,
        "to": format!("/{cse_id}"),
    });
    let topic = format!("/oneM2M/resp/{cse_id}/{}/{}", wire.origin, suffix(ser));
    if let Err(e) = wire
        .client
        .publish(topic, Bytes::from(ser.encode(&answer)))
        .await
    {
        debug!(error = %e, "could not answer a notification over MQTT");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_paths_map_to_the_mqtt_binding() {
        assert_eq!(
            split_base("mqtt://127.0.0.1:1883/id-mn").unwrap(),
            ("mqtt://127.0.0.1:1883", "id-mn")
        );
        assert!(split_base("mqtt://127.0.0.1:1883").is_err());
        assert!(split_base("mqtt://127.0.0.1:1883/a/b").is_err());
        assert!(split_base("http://127.0.0.1/a").is_err());
        assert_eq!(to_of("/~/id-mn/cse-mn/Cx/inbox"), "/id-mn/cse-mn/Cx/inbox");
        assert_eq!(to_of("/_/sp/id-mn/cse-mn/Cx"), "//sp/id-mn/cse-mn/Cx");
        assert_eq!(to_of("/cse-mn"), "cse-mn");
        assert_eq!(operation(&Method::PUT), 3);
    }
}

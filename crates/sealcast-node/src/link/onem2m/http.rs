//! The client of one originator: requests over the HTTP binding (TS-0009)
//! from a pool of connections, or over the MQTT binding
//! ([`super::mqtt_binding`]) when the CSE is named `mqtt://…`; and reading
//! a CSE's `<CSEBase>`.

use super::*;

/// The HTTP binding's client: one CSE connection pool per link.
pub(super) struct Client {
    pub(super) origin: String,
    serialization: Serialization,
    request_id: AtomicU64,
    idle: Mutex<BTreeMap<String, Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>>,
    /// The MQTT binding's connection, made on the first request to an
    /// `mqtt://` CSE.
    mqtt: tokio::sync::OnceCell<Arc<super::mqtt_binding::MqttWire>>,
    /// Where notifications that arrive over MQTT go.
    pub(super) listener: Arc<Mutex<Option<Arc<Listener>>>>,
}

/// How long one request may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub(super) fn new(origin: String, serialization: Serialization) -> Self {
        Self {
            origin,
            serialization,
            request_id: AtomicU64::new(1),
            idle: Mutex::new(BTreeMap::new()),
            mqtt: tokio::sync::OnceCell::new(),
            listener: Arc::new(Mutex::new(None)),
        }
    }

    async fn connection(
        &self,
        base: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(base)
                .and_then(Vec::pop);
            match pooled {
                Some(mut c) => {
                    if !c.is_closed() && c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                None => break,
            }
        }
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| Error::Runtime(format!("CSE URL {base} is not http://host:port")))?;
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| Error::Runtime(format!("cannot reach the CSE at {base}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Runtime(format!("HTTP to the CSE at {base}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request primitive and returns the CSE's response status
    /// code and content.
    pub(super) async fn request(
        &self,
        method: Method,
        base: &str,
        path: &str,
        create: Option<Type>,
        content: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let ri = self.request_id.fetch_add(1, Ordering::Relaxed);
        if base.starts_with("mqtt://") {
            let (broker, _) = super::mqtt_binding::split_base(base)?;
            let wire = self
                .mqtt
                .get_or_try_init(|| {
                    super::mqtt_binding::MqttWire::connect(
                        broker,
                        &self.origin,
                        self.serialization,
                        Arc::clone(&self.listener),
                    )
                })
                .await?;
            let rqi = format!("{}-{}-{ri}", self.origin, std::process::id());
            return wire
                .request(base, &method, path, create, content, rqi)
                .await;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", base.trim_start_matches("http://"))
            .header("X-M2M-Origin", &self.origin)
            .header("X-M2M-RI", format!("{}-{ri}", self.origin))
            .header("X-M2M-RVI", "4")
            .header("Accept", self.serialization.media_type());
        let body = match content {
            Some(c) => {
                let ct = match create {
                    Some(ty) => self.serialization.create_content_type(ty),
                    None => self.serialization.media_type().to_owned(),
                };
                req = req.header("Content-Type", ct);
                Bytes::from(self.serialization.encode(c))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Runtime(format!("building a oneM2M request: {e}")))?;
        let exchange = async {
            let mut conn = self.connection(base).await?;
            let resp = conn
                .send_request(req)
                .await
                .map_err(|e| Error::Runtime(format!("HTTP to the CSE at {base}: {e}")))?;
            let rsc = resp
                .headers()
                .get("X-M2M-RSC")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok());
            let ser = resp
                .headers()
                .get("Content-Type")
                .and_then(|v| v.to_str().ok())
                .and_then(Serialization::of_content_type)
                .unwrap_or(self.serialization);
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_PRIMITIVE)
                .collect()
                .await
                .map_err(|e| Error::Runtime(format!("reading the CSE's answer: {e}")))?
                .to_bytes();
            if !conn.is_closed() {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(base.to_owned())
                    .or_default()
                    .push(conn);
            }
            let rsc = rsc.ok_or_else(|| {
                Error::Runtime(format!(
                    "{base}{path} answered HTTP {status} without X-M2M-RSC: is it a oneM2M CSE?"
                ))
            })?;
            Ok::<_, Error>((rsc, ser.decode(&bytes).unwrap_or(serde_json::Value::Null)))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                Error::Runtime(format!(
                    "the CSE at {base} did not answer within {REQUEST_TIMEOUT:?}"
                ))
            })?
    }

    /// A request whose answer must be a success.
    pub(super) async fn expect(
        &self,
        method: Method,
        base: &str,
        path: &str,
        create: Option<Type>,
        content: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let what = format!("{method} {path} as {}", self.origin);
        let (rsc, value) = self.request(method, base, path, create, content).await?;
        primitive::check_response(rsc, value)
            .map_err(|e| Error::Runtime(format!("oneM2M {what}: {e}")))
    }
}

impl Client {
    /// Creates the child `name` of `parent` unless it exists (4105), and
    /// returns its representation either way.
    pub(super) async fn ensure(
        &self,
        base: &str,
        parent: &str,
        name: &str,
        ty: Type,
        content: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (rsc, value) = self
            .request(Method::POST, base, parent, Some(ty), Some(content))
            .await?;
        if rsc == 4105 {
            return self
                .expect(Method::GET, base, &format!("{parent}/{name}"), None, None)
                .await;
        }
        primitive::check_response(rsc, value).map_err(|e| {
            Error::Runtime(format!(
                "oneM2M: creating {parent}/{name} as {}: {e}",
                self.origin
            ))
        })
    }
}

/// Reads a CSE's `<CSEBase>` at `url` (`http://host:port/<name>`, or
/// `mqtt://broker:port/<cse-id>/<name>` for the MQTT binding).
pub(super) async fn discover(url: &str, serialization: Serialization) -> Result<CseBase> {
    if let Some(rest) = url.strip_prefix("mqtt://") {
        let mut parts = rest.trim_end_matches('/').splitn(3, '/');
        let (Some(authority), Some(cse_id), Some(name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Runtime(format!(
                "CSE URL {url} must be mqtt://broker:port/<CSE-ID>/<CSEBase name>"
            )));
        };
        let base = format!("mqtt://{authority}/{cse_id}");
        let client = Client::new("CAdmin".into(), serialization);
        let cb = client
            .expect(
                Method::GET,
                &base,
                &format!("/~/{cse_id}/{name}"),
                None,
                None,
            )
            .await?;
        return Ok(CseBase::from_cse_base(&base, &cb)?);
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::Runtime(format!(
            "CSE URL {url} must be http://host:port/<CSEBase name>"
        ))
    })?;
    let (authority, path) = rest
        .split_once('/')
        .filter(|(_, p)| !p.is_empty())
        .ok_or_else(|| {
            Error::Runtime(format!(
                "CSE URL {url} must name the CSEBase: http://host:port/<name>"
            ))
        })?;
    let base = format!("http://{authority}");
    // Any originator may retrieve the CSEBase on ACME; CAdmin is the one
    // every CSE knows.
    let client = Client::new("CAdmin".into(), serialization);
    let cb = client
        .expect(Method::GET, &base, &format!("/{path}"), None, None)
        .await?;
    Ok(CseBase::from_cse_base(&base, &cb)?)
}

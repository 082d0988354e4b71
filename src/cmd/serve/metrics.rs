//! The services' readiness and metrics endpoint (`metrics_listen` in a
//! manager, agent or device config): a small HTTP/1.1 server on the address
//! given (loopback unless the operator says otherwise) answering
//!
//! - `GET /health`: `200 ready` once the service runs, `503 starting` before;
//! - `GET /metrics`: counters and gauges in the Prometheus text format 0.0.4.
//!
//! Requests are bounded (8 KiB of header, 5 s to send it), one per
//! connection, and answered with `Connection: close`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::error::{CliError, Result};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    samples: BTreeMap<String, f64>,
}

/// The metrics of one service, and whether it is ready.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
    ready: AtomicBool,
}

impl Registry {
    /// Adds 1 to counter `name` with `labels` (`[("group", "fire-doors")]`).
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.update(name, help, Kind::Counter, labels, |v| v + 1.0);
    }

    /// Adds `n` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], n: u64) {
        self.update(name, help, Kind::Counter, labels, |v| v + n as f64);
    }

    /// Sets gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.update(name, help, Kind::Gauge, labels, |_| value);
    }

    fn update(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        f: impl FnOnce(f64) -> f64,
    ) {
        let Ok(mut families) = self.families.lock() else {
            return;
        };
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            samples: BTreeMap::new(),
        });
        let key = render_labels(labels);
        let value = family.samples.entry(key).or_insert(0.0);
        *value = f(*value);
    }

    /// Marks the service ready (`/health` answers 200 from now on).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(families) = self.families.lock() else {
            return out;
        };
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &family.samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

/// `{a="x",b="y"}`, values escaped as the text format requires.
fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Binds `addr` (a failure is reported before the service starts) and
/// serves `registry` on it in the background of the current runtime.
pub async fn start(addr: SocketAddr, registry: Arc<Registry>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        CliError::other(format!(
            "cannot listen for metrics on {addr}: {e}; choose another metrics_listen"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(address = %bound, "metrics and health endpoint listening (/metrics, /health)");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &registry).await {
                            debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = request
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        ("GET", "/health") if registry.ready.load(Ordering::SeqCst) => {
            ("200 OK", "text/plain", "ready\n".to_owned())
        }
        ("GET", "/health") => (
            "503 Service Unavailable",
            "text/plain",
            "starting\n".to_owned(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The coarse reason of a refused message, as a metric label.
pub fn refusal_reason(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.starts_with("replay") {
        "replay"
    } else if r.contains("timestamp") {
        "stale"
    } else if r.contains("epoch") {
        "epoch"
    } else if r.contains("decrypt") {
        "decrypt"
    } else if r.contains("signature") || r.contains("signer") {
        "signature"
    } else {
        "malformed"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let r = Registry::default();
        r.inc("sealcast_x_total", "X.", &[("group", "a\"b")]);
        r.inc("sealcast_x_total", "X.", &[("group", "a\"b")]);
        r.set("sealcast_epoch", "Epoch.", &[], 3.0);
        let text = r.render();
        assert!(text.contains("# TYPE sealcast_x_total counter\n"), "{text}");
        assert!(
            text.contains("sealcast_x_total{group=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("sealcast_epoch 3\n"), "{text}");
    }
}

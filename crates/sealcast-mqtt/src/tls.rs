//! TLS to the broker, and broker URLs that carry security settings.
//!
//! **The TLS stack.** rustls with the *ring* crypto provider. rustls is a
//! memory-safe TLS 1.2/1.3 implementation; of its two stock providers,
//! aws-lc-rs needs CMake (and for some targets Go or NASM) to build, while
//! ring needs only the C compiler that every Rust toolchain on Linux links
//! with already (the bundled SQLite of `sealcast-store` needs it too). So a
//! fresh machine with only the Rust toolchain builds it. The provider is
//! given to rustls explicitly (`builder_with_provider`), never installed as
//! a process-wide default. (ring has no post-quantum key exchange; rustls
//! 0.23.48 deprecates it for that reason. The broker link only hides
//! metadata and authenticates the client: the content is end-to-end COSE.)
//!
//! **URLs.** `mqtts://host[:port]` (or `ssl://`; default port 8883) asks for
//! TLS; query parameters name files, never secrets:
//!
//! | parameter | meaning |
//! |---|---|
//! | `ca=PATH` | PEM certificates of the CA(s) the broker's certificate must chain to (required with `mqtts://`) |
//! | `cert=PATH`, `key=PATH` | PEM client certificate chain and its private key (PKCS#8, SEC1 or PKCS#1), for brokers that require client certificates |
//! | `username=NAME` | the MQTT username (or `user@host` in the URL) |
//! | `password_file=PATH` | the password: the file's first line (or `SEALCAST_BROKER_PASSWORD`, or `user:password@host` in the URL — discouraged: URLs end up in shell histories) |
//! | `client_id=ID` | the MQTT client id, instead of the one the caller derives (two managers of one store on one broker need two) |
//!
//! [`redact_url`] gives the form to log: user info replaced, query kept
//! (it holds paths only).

use core::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;

use crate::error::{Error, Result};

/// Environment variable read for the broker password when a username is
/// given without one.
pub const PASSWORD_ENV: &str = "SEALCAST_BROKER_PASSWORD";

/// Largest PEM or password file read.
const MAX_FILE: u64 = 256 * 1024;

/// A client certificate chain (PEM) and its private key (PEM, wiped on drop).
type ClientAuth = (Vec<u8>, Arc<zeroize::Zeroizing<Vec<u8>>>);

/// The broker's CA and, optionally, our client certificate. `Debug` shows
/// paths and sizes, never key bytes.
#[derive(Clone)]
pub struct TlsSettings {
    ca_pem: Vec<u8>,
    client: Option<ClientAuth>,
    origin: String,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.origin)
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Trust the CA certificates in `ca_pem` (PEM). `origin` names them in
    /// errors (a path).
    pub fn new(ca_pem: Vec<u8>, origin: impl Into<String>) -> Self {
        Self {
            ca_pem,
            client: None,
            origin: origin.into(),
        }
    }

    /// Reads the CA certificates from a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<Self> {
        Ok(Self::new(
            read_file(path, "CA file")?,
            path.display().to_string(),
        ))
    }

    /// Also authenticate with a client certificate chain and its key (PEM).
    pub fn with_client_auth(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.client = Some((cert_pem, Arc::new(zeroize::Zeroizing::new(key_pem))));
        self
    }

    /// The rustls client configuration: these roots, TLS 1.2 and 1.3, the
    /// ring provider.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig> {
        let tls = |what: &str, e: &dyn fmt::Display| Error::Tls(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        let mut reader = self.ca_pem.as_slice();
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| tls(&format!("CA file {}", self.origin), &e))?;
            roots
                .add(cert)
                .map_err(|e| tls(&format!("CA file {}", self.origin), &e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(format!(
                "CA file {} holds no PEM certificate",
                self.origin
            )));
        }
        // rustls 0.23.48 marks the ring provider deprecated because ring has
        // no post-quantum key exchange (X25519MLKEM768); the provider that
        // has it, aws-lc-rs, does not build without CMake. The end-to-end
        // COSE layer, not this link, protects sealcast's content.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls("TLS versions", &e))?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_pem, key_pem)) => {
                let mut reader = cert_pem.as_slice();
                let chain = rustls_pemfile::certs(&mut reader)
                    .collect::<core::result::Result<Vec<_>, _>>()
                    .map_err(|e| tls("client certificate", &e))?;
                if chain.is_empty() {
                    return Err(Error::Tls(
                        "the client certificate file holds no PEM certificate".into(),
                    ));
                }
                let mut reader = key_pem.as_slice();
                let key = rustls_pemfile::private_key(&mut reader)
                    .map_err(|e| tls("client key", &e))?
                    .ok_or_else(|| {
                        Error::Tls("the client key file holds no PEM private key".into())
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls("client certificate and key", &e))
            }
        }
    }
}

/// What a broker URL asks for beyond host and port. `Debug` leaves the
/// password out.
#[derive(Default)]
pub(crate) struct UrlSecurity {
    pub(crate) tls: bool,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<zeroize::Zeroizing<String>>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) client_id: Option<String>,
}

impl fmt::Debug for UrlSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSecurity")
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Splits `query` (`a=b&c=d`, percent-encoded) into the settings above.
pub(crate) fn parse_query(query: &str, into: &mut UrlSecurity) -> Result<()> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or(Error::InvalidConfig("URL query entries must be key=value"))?;
        let v = percent_decode(v)?;
        match k {
            "ca" => into.ca = Some(PathBuf::from(v)),
            "cert" => into.cert = Some(PathBuf::from(v)),
            "key" => into.key = Some(PathBuf::from(v)),
            "username" => into.username = Some(v),
            "password_file" => into.password_file = Some(PathBuf::from(v)),
            "client_id" => into.client_id = Some(v),
            _ => {
                return Err(Error::InvalidConfig(
                    "unknown URL parameter (ca, cert, key, username, password_file, client_id)",
                ));
            }
        }
    }
    Ok(())
}

/// `%XX` encoding of a URL query value: everything but `A-Z a-z 0-9 - . _
/// ~ /` is escaped (so paths stay readable in logs).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` decoding of URL parts; anything else is taken literally.
pub(crate) fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| core::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Error::InvalidConfig("bad %-escape in the URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidConfig("the URL is not UTF-8"))
}

/// Reads a small file whole.
pub(crate) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Tls(format!("cannot read the {what} {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Tls(format!("cannot read the {what} {}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(Error::Tls(format!(
            "the {what} {} is larger than {MAX_FILE} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// The first line of a password file.
pub(crate) fn read_password(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let bytes = zeroize::Zeroizing::new(read_file(path, "password file")?);
    let text = core::str::from_utf8(&bytes)
        .map_err(|_| Error::Tls(format!("the password file {} is not UTF-8", path.display())))?;
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or("").to_owned(),
    ))
}

/// `url` with any user info replaced by `***@`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_decoding() {
        assert_eq!(
            redact_url("mqtts://dev:s3cret@broker:8883?ca=/x"),
            "mqtts://***@broker:8883?ca=/x"
        );
        assert_eq!(redact_url("mqtt://broker"), "mqtt://broker");
        assert_eq!(percent_decode("a%2Fb%40c").unwrap(), "a/b@c");
        let odd = "/tmp/a b&c=d%e?";
        assert_eq!(percent_decode(&percent_encode(odd)).unwrap(), odd);
        assert!(percent_decode("%zz").is_err());
        let mut s = UrlSecurity::default();
        parse_query("ca=%2Fetc%2Fca.pem&username=dev", &mut s).unwrap();
        assert_eq!(s.ca.unwrap(), PathBuf::from("/etc/ca.pem"));
        assert!(parse_query("password=x", &mut UrlSecurity::default()).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let err = TlsSettings::new(b"not pem".to_vec(), "ca.pem")
            .client_config()
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}

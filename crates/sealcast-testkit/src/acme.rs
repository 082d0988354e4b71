//! The ACME oneM2M CSE (`pip install acmecse==2026.5.3`) as a test peer: an
//! IN-CSE and an MN-CSE registered to it, each on a free loopback port
//! with an in-memory database and its own CSE-ID, stopped (SIGTERM, then
//! kill) when dropped.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming a Python with `acmecse` installed.
pub const ACME_ENV: &str = "SEALCAST_ACME";

/// The port of the broker at `SEALCAST_MQTT_URL` on 127.0.0.1 (CI:
/// Mosquitto on 1883), for the CSEs' MQTT binding; None after a NOT RUN
/// banner naming `test` (a failure in CI).
///
/// # Panics
/// When the URL names no port.
#[allow(clippy::panic)]
pub fn mqtt_binding_port(test: &str) -> Option<u16> {
    let url = crate::require(
        "SEALCAST_MQTT_URL",
        test,
        "an MQTT broker on 127.0.0.1 for the CSEs' MQTT binding (CI: mqtt://127.0.0.1:1883)",
    )?;
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok());
    Some(port.unwrap_or_else(|| panic!("no port in SEALCAST_MQTT_URL={url}")))
}

/// One running CSE.
#[derive(Debug)]
pub struct Cse {
    child: Child,
    /// Its `<CSEBase>` URL (`http://127.0.0.1:<port>/<name>`).
    pub url: String,
    /// Its CSE-ID (without `/`).
    pub cse_id: String,
    /// Its base directory (ini, logs).
    pub dir: PathBuf,
    /// Its `<CSEBase>` on the MQTT binding
    /// (`mqtt://127.0.0.1:<broker>/<cse-id>/<name>`), if started with one.
    pub mqtt_url: Option<String>,
    python: String,
    port: u16,
    name: &'static str,
}

impl Cse {
    /// Stops it (SIGTERM) and starts it again on the same port with the
    /// same configuration: with the in-memory database, every resource is
    /// gone.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn(&self.python, &self.dir)?;
        let (port, path) = (self.port, format!("/{}", self.name));
        wait_ready(self, port, &path, "restarted CSE")
    }

    /// Stops it with SIGTERM and waits (kill after 10 s).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The tail of its log file, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Cse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An IN-CSE and an MN-CSE registered to it.
#[derive(Debug)]
pub struct AcmePair {
    /// The MN-CSE (dropped first).
    pub mn: Cse,
    /// The IN-CSE.
    pub infra: Cse,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `GET path` on `port` as CAdmin; the response status code (`X-M2M-RSC`).
pub fn get_rsc(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: probe\r\nX-M2M-RVI: 4\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("X-M2M-RSC")
            .then(|| v.trim().parse().ok())?
    })
}

fn write_ini(dir: &Path, body: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("acme.ini"), body).map_err(|e| format!("acme.ini: {e}"))
}

fn spawn(python: &str, dir: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?;
    Command::new(python)
        .args(["-m", "acmecse", "--headless", "-dir"])
        .arg(dir)
        .args(["--config", "acme.ini"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {python} -m acmecse: {e}"))
}

const COMMON: &str = "databaseType=memory\nlogLevel=info\nnetworkInterface=127.0.0.1\ncseHost=127.0.0.1\nserviceProviderID=//sealcast.example\nadminID=CAdmin\nsecret=sealcast-test-secret\n";
const TAIL: &str = "[console]\nheadless=true\n[textui]\nenable=false\n[webui]\nenable=false\n[logging]\nenableFileLogging=true\nenableScreenLogging=false\n";

fn wait_ready(cse: &mut Cse, port: u16, path: &str, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = cse.child.try_wait() {
            return Err(format!(
                "the {what} exited ({status}) before it was ready; its log:\n{}",
                cse.log_tail()
            ));
        }
        if get_rsc(port, path) == Some(2000) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the {what} was not ready within 30 s; its log:\n{}",
        cse.log_tail()
    ))
}

impl AcmePair {
    /// Starts both CSEs under `dir` with `python` and returns once the MN
    /// is registered to the IN (the IN answers through the MN).
    pub fn start(python: &str, dir: &Path) -> Result<Self, String> {
        Self::start_with(python, dir, None)
    }

    /// [`AcmePair::start`] with both CSEs' MQTT binding on the broker at
    /// 127.0.0.1:`mqtt_port` as well.
    pub fn start_with(python: &str, dir: &Path, mqtt_port: Option<u16>) -> Result<Self, String> {
        let mqtt = mqtt_port.map_or(String::new(), |p| {
            format!("[mqtt]\nenable=true\naddress=127.0.0.1\nport={p}\n")
        });
        let (in_port, mn_port) = (free_port()?, free_port()?);
        let (in_id, mn_id) = (format!("id-in-{in_port}"), format!("id-mn-{mn_port}"));
        let in_dir = dir.join("cse-in");
        write_ini(
            &in_dir,
            &format!(
                "[basic.config]\ncseType=IN\ncseID={in_id}\ncseName=cse-in\nhttpPort={in_port}\n{COMMON}[cse.registration]\nallowedCSROriginators=/{mn_id}\n{mqtt}{TAIL}"
            ),
        )?;
        let mut infra = Cse {
            child: spawn(python, &in_dir)?,
            url: format!("http://127.0.0.1:{in_port}/cse-in"),
            cse_id: in_id.clone(),
            dir: in_dir,
            mqtt_url: mqtt_port.map(|p| format!("mqtt://127.0.0.1:{p}/{in_id}/cse-in")),
            python: python.to_owned(),
            port: in_port,
            name: "cse-in",
        };
        wait_ready(&mut infra, in_port, "/cse-in", "IN-CSE")?;
        let mn_dir = dir.join("cse-mn");
        write_ini(
            &mn_dir,
            &format!(
                "[basic.config]\ncseType=MN\ncseID={mn_id}\ncseName=cse-mn\nhttpPort={mn_port}\nregistrarCseHost=127.0.0.1\nregistrarCsePort={in_port}\nregistrarCseID={in_id}\nregistrarCseName=cse-in\n{COMMON}[cse.registrar]\nINCSEcseID=/{in_id}\n{mqtt}{TAIL}"
            ),
        )?;
        let mut mn = Cse {
            child: spawn(python, &mn_dir)?,
            url: format!("http://127.0.0.1:{mn_port}/cse-mn"),
            mqtt_url: mqtt_port.map(|p| format!("mqtt://127.0.0.1:{p}/{mn_id}/cse-mn")),
            cse_id: mn_id,
            dir: mn_dir,
            python: python.to_owned(),
            port: mn_port,
            name: "cse-mn",
        };
        wait_ready(&mut mn, mn_port, "/cse-mn", "MN-CSE")?;
        // Registered: the IN holds the MN's <remoteCSE>.
        let csr = format!("/cse-in/{}", mn.cse_id);
        wait_ready(
            &mut infra,
            in_port,
            &csr,
            "MN-CSE's registration with the IN-CSE",
        )?;
        Ok(Self { mn, infra })
    }

    /// Restarts the MN-CSE (its resources are lost) and waits until it is
    /// registered with the IN-CSE again.
    pub fn restart_mn(&mut self) -> Result<(), String> {
        self.mn.restart()?;
        let csr = format!("/cse-in/{}", self.mn.cse_id);
        let port = self.infra.port;
        wait_ready(
            &mut self.infra,
            port,
            &csr,
            "MN-CSE's registration after its restart",
        )
    }
}

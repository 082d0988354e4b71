//! Smart metering as services: `sealcast headend serve`, the `[dap]`
//! section of `sealcast agent serve`, and the one-shot meter
//! `sealcast device report`.
//!
//! ```toml
//! # headend.toml
//! broker = "mqtt://127.0.0.1:1883"
//! key = "headend.key"
//! state_dir = "headend-state"
//! meters_dir = "meters"             # every *.pub in it is a meter's public key
//! verify_meter_signatures = false   # true: re-check each meter's signature too
//! [[dap]]
//! id = "dap-1"
//! public_key = "dap-1.pub"
//! [[meter]]                         # meters may also be listed one by one
//! id = "meter-9"
//! public_key = "meter-9.pub"
//!
//! # agent.toml (a DAP: manager_public_key may be left out; then only the DAP runs)
//! broker = "mqtt://127.0.0.1:1883"
//! key = "dap-1.key"
//! state_dir = "dap-1-state"
//! [dap]
//! group = "street-7"
//! headend = "headend"
//! headend_public_key = "headend.pub"
//! meters_dir = "meters"
//! batch_size = 64
//! max_batch_delay_ms = 200
//!
//! # meter-1.toml (sealcast device report)
//! broker = "mqtt://127.0.0.1:1883"
//! key = "meter-1.key"
//! state_dir = "meter-1-state"
//! dap = "dap-1"
//! headend_public_key = "headend.pub"
//!
//! # On CoAP instead of `broker`, in each of the three (as for the other
//! # services): the entity's endpoint, the group, and its peers' endpoints
//! # (headend: its DAPs; DAP: the headend; meter: its DAP).
//! transport = "coap"
//! [coap]
//! listen = "127.0.0.1:5711"        # a meter only sends: "127.0.0.1:0"
//! group = "224.0.1.187:5683"
//! [[coap.endpoint]]
//! id = "headend"
//! address = "127.0.0.1:5710"
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sealcast_core::credential::PublicCredential;
use sealcast_metering::wire::{MAX_ANNOUNCED_METERS, MAX_BATCH_REPORTS};
use sealcast_node::dap::{self, DapConfig, DapCore, DapEvent};
use sealcast_node::headend::{
    self, HeadendConfig, HeadendCore, HeadendEvent, LogReadings, Reading, ReadingHandler,
};
use sealcast_node::meter::{MeterConfig, report_once};
use sealcast_store::DeviceStateFile;
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    CoapSection, OneM2mSection, ServeArgs, TransportName, broker_security, broker_url, create_dir,
    entity, failed, init_logs, link_config, node_config, read_config, resolve, runtime, topics,
    wait_for_stop_signal,
};
use crate::cmd::{load_private_key, load_public_key, say};
use crate::error::{CliError, Result};

/// Most readings one `device report` sends.
const MAX_COUNT: u32 = 10_000;

/// Arguments of `sealcast headend serve`.
#[derive(Debug, Args)]
pub struct HeadendServeArgs {
    /// The headend's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Also append one line per reading to this file
    /// (`meter=<id> seq=<n> dap=<id> reading=<text>`).
    #[arg(long, value_name = "FILE")]
    pub readings: Option<PathBuf>,
}

/// Arguments of `sealcast device report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The meter's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The reading's text; `{n}` in it becomes the report's index (0..count).
    #[arg(long, value_name = "TEXT")]
    pub reading: String,
    /// Reports to send (consecutive sequence numbers).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    public_key: PathBuf,
}

/// `headend.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeadendFile {
    /// MQTT broker URL (with `transport = "mqtt"`, the default).
    #[serde(default)]
    broker: String,
    /// `"mqtt"` (default), `"coap"` or `"onem2m"`.
    transport: Option<TransportName>,
    /// The CoAP endpoint, group and address book (with `transport = "coap"`).
    coap: Option<CoapSection>,
    /// The CSEs (with `transport = "onem2m"`; the headend registers on
    /// the infrastructure CSE).
    onem2m: Option<OneM2mSection>,
    topic_prefix: Option<String>,
    /// PEM file of the CA the broker's certificate chains to (with an
    /// `mqtts://` broker).
    tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (keep it 0600).
    tls_key: Option<PathBuf>,
    /// MQTT username.
    username: Option<String>,
    /// File whose first line is the MQTT password (else
    /// `SEALCAST_BROKER_PASSWORD`).
    password_file: Option<PathBuf>,
    key: PathBuf,
    state_dir: PathBuf,
    #[serde(default)]
    verify_meter_signatures: bool,
    meters_dir: Option<PathBuf>,
    #[serde(default)]
    meter: Vec<KeyEntry>,
    #[serde(default)]
    dap: Vec<KeyEntry>,
    /// Rules decrypted readings must meet (`[[plausibility]]`).
    #[serde(default)]
    plausibility: Vec<PlausibilityEntry>,
    /// What the headend does on its DAPs' misbehaviour reports and on
    /// implausible readings (`[[misbehaviour]]`, as in `manager.toml`).
    #[serde(default)]
    misbehaviour: Vec<super::MisbehaviourEntry>,
    /// Meters suspended, revoked or reinstated by hand
    /// (`[[meter_status]]`; applied at start and on SIGHUP).
    #[serde(default)]
    meter_status: Vec<MeterStatusEntry>,
    /// The downlink to the meters (`[downlink]`; absent: none).
    downlink: Option<DownlinkSection>,
    /// The audit log (default `<state_dir>/audit.jsonl`).
    audit_log: Option<PathBuf>,
    /// Rotate the audit log at this many KiB (default 16384).
    audit_max_kib: Option<u64>,
    /// Rotated audit segments kept (default 8).
    audit_keep: Option<usize>,
}

/// The `[downlink]` section of `headend.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownlinkSection {
    /// The meter group's name (default "meters"; the meters' `meter_group`).
    group: Option<String>,
    /// How soon an unconfirmed meter is served again, in ms (default
    /// 5000; doubles per unanswered try, at most ten minutes).
    retry_ms: Option<u64>,
    /// Refresh each meter's security association once it is this many
    /// seconds old (default: only by hand, `headend sa refresh`).
    sa_refresh_s: Option<u64>,
}

impl DownlinkSection {
    fn config(&self, state_dir: &Path) -> Result<sealcast_node::downlink::DownlinkConfig> {
        let retry = self.retry_ms.unwrap_or(5000);
        if !(50..=600_000).contains(&retry) {
            return Err(CliError::usage("[downlink] retry_ms must be 50..=600000"));
        }
        Ok(sealcast_node::downlink::DownlinkConfig {
            group: meter_group(self.group.as_deref())?,
            state_file: Some(DeviceStateFile::new(
                state_dir.join(sealcast_node::downlink::HEADEND_DOWNLINK_FILE),
            )),
            retry: Duration::from_millis(retry),
            sa_max_age: match self.sa_refresh_s {
                None => None,
                Some(s) if s >= 1 => Some(Duration::from_secs(s)),
                Some(_) => {
                    return Err(CliError::usage(
                        "[downlink] sa_refresh_s must be at least 1 (seconds; days, e.g. 2592000, in practice)",
                    ));
                }
            },
        })
    }
}

/// The meter group named in a config (default "meters").
fn meter_group(name: Option<&str>) -> Result<sealcast_core::ids::GroupId> {
    let name = name.unwrap_or("meters");
    sealcast_core::target::check_topic_name(name)
        .and_then(|()| sealcast_core::ids::GroupId::new(name))
        .map_err(|e| CliError::usage(format!("meter group {name:?}: {e}")))
}

/// One `[[meter_status]]` entry of `headend.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterStatusEntry {
    meter: String,
    /// `suspended`, `revoked` or `reinstated`.
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

/// The operator's listings of `headend.toml`.
fn operator_listings(entries: &[MeterStatusEntry]) -> Result<Vec<headend::OperatorListing>> {
    entries
        .iter()
        .map(|e| {
            let status = match e.status.as_str() {
                "reinstated" | "reinstate" => None,
                s => Some(sealcast_group::status::Status::parse(s).ok_or_else(|| {
                    CliError::usage(format!(
                        "[[meter_status]] {}: status {s:?}: use suspended, revoked or reinstated",
                        e.meter
                    ))
                })?),
            };
            Ok(headend::OperatorListing {
                meter: sealcast_core::ids::EntityId::new(&e.meter).map_err(|err| {
                    CliError::usage(format!("[[meter_status]] meter {:?}: {err}", e.meter))
                })?,
                status,
                reason: e.reason.clone().unwrap_or_else(|| "by hand".to_owned()),
            })
        })
        .collect()
}

/// The `[dap]` section of `agent.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DapSection {
    #[serde(default = "default_group")]
    group: String,
    headend: String,
    headend_public_key: PathBuf,
    meters_dir: Option<PathBuf>,
    #[serde(default)]
    meter: Vec<KeyEntry>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_delay")]
    max_batch_delay_ms: u64,
    /// A report pool this DAP takes a share of (an MQTT shared
    /// subscription to the pool's report topic; meters name the pool as
    /// their `dap`). Each DAP of a pool has its own id, key and state.
    pool: Option<String>,
    /// Caps what one meter may send: genuine reports beyond this many a
    /// minute on average (after a burst of `max_report_burst`, default the
    /// same number) are dropped and counted (`rate_limited`). Unset: no cap.
    max_reports_per_meter_per_minute: Option<u32>,
    max_report_burst: Option<u32>,
    /// Drop reports whose timestamp is further than this from the DAP's
    /// clock, in seconds (unset: no bound).
    max_report_drift_s: Option<u64>,
    /// Flag (log, count, audit; still forward) a report whose sequence
    /// number jumps more than this above its meter's highest (unset: no
    /// flag). Keep it above 64: a one-shot meter skips up to that many
    /// between runs.
    max_seq_gap: Option<u64>,
    /// The DAP's audit log (default `<state_dir>/dap-audit.jsonl`, apart
    /// from the gateway node's `audit.jsonl` when both run).
    audit_log: Option<PathBuf>,
    /// Rotate the DAP's audit log at this many KiB (default 16384).
    audit_max_kib: Option<u64>,
    /// Rotated segments of it kept (default 8).
    audit_keep: Option<usize>,
    /// Misbehaviour reports to the headend (over-rate meters, forgeries
    /// and replays naming a meter) at most this often; 0: none (default
    /// 2000).
    report_interval_ms: Option<u64>,
}

/// One `[[plausibility]]` rule of `headend.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlausibilityEntry {
    /// Meters whose id starts with this (default: every meter).
    #[serde(default)]
    meters: String,
    min: Option<f64>,
    max: Option<f64>,
    max_rise_per_hour: Option<f64>,
    #[serde(default)]
    monotonic: bool,
    /// `"HH-HH"`, UTC, the end exclusive (`"22-06"` wraps past midnight).
    hours: Option<String>,
    /// `"drop"` (default) or `"flag"`.
    action: Option<String>,
}

impl PlausibilityEntry {
    fn rule(&self, n: usize) -> Result<sealcast_metering::plausibility::Rule> {
        use sealcast_metering::plausibility::{Action, Rule};
        let bad = |what: &str| CliError::usage(format!("[[plausibility]] number {n}: {what}"));
        let hours = self
            .hours
            .as_deref()
            .map(super::parse_hours)
            .transpose()
            .map_err(|e| bad(&e))?;
        let action = match self.action.as_deref() {
            None | Some("drop") => Action::Drop,
            Some("flag") => Action::Flag,
            Some(other) => return Err(bad(&format!("action {other:?}: use \"drop\" or \"flag\""))),
        };
        for v in [self.min, self.max, self.max_rise_per_hour]
            .into_iter()
            .flatten()
        {
            if !v.is_finite() {
                return Err(bad("numbers must be finite"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max)
            && lo > hi
        {
            return Err(bad("min is above max"));
        }
        if self.max_rise_per_hour.is_some_and(|r| r < 0.0) {
            return Err(bad("max_rise_per_hour must be at least 0"));
        }
        Ok(Rule {
            meter_prefix: self.meters.clone(),
            min: self.min,
            max: self.max,
            max_rise_per_hour: self.max_rise_per_hour,
            monotonic: self.monotonic,
            hours,
            action,
        })
    }
}

fn default_group() -> String {
    "meters".into()
}
fn default_batch_size() -> usize {
    64
}
fn default_delay() -> u64 {
    200
}

/// `agent.toml` as the DAP reads it (the node fields are read by the
/// gateway part, when `manager_public_key` is present).
#[derive(Debug, Deserialize)]
pub(super) struct AgentFile {
    /// MQTT broker URL (with `transport = "mqtt"`, the default).
    #[serde(default)]
    broker: String,
    /// `"mqtt"` (default), `"coap"` or `"onem2m"`.
    transport: Option<TransportName>,
    /// The CoAP endpoint, group and address book (with `transport = "coap"`).
    coap: Option<CoapSection>,
    /// The CSEs (with `transport = "onem2m"`; the headend registers on
    /// the infrastructure CSE).
    onem2m: Option<OneM2mSection>,
    topic_prefix: Option<String>,
    /// PEM file of the CA the broker's certificate chains to (with an
    /// `mqtts://` broker).
    tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (keep it 0600).
    tls_key: Option<PathBuf>,
    /// MQTT username.
    username: Option<String>,
    /// File whose first line is the MQTT password (else
    /// `SEALCAST_BROKER_PASSWORD`).
    password_file: Option<PathBuf>,
    key: PathBuf,
    manager_public_key: Option<PathBuf>,
    state_dir: PathBuf,
    dap: Option<DapSection>,
}

/// `meter.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MeterFile {
    /// MQTT broker URL (with `transport = "mqtt"`, the default).
    #[serde(default)]
    broker: String,
    /// `"mqtt"` (default), `"coap"` or `"onem2m"`.
    transport: Option<TransportName>,
    /// The CoAP endpoint, group and address book (with `transport = "coap"`).
    coap: Option<CoapSection>,
    /// The CSEs (with `transport = "onem2m"`; the headend registers on
    /// the infrastructure CSE).
    onem2m: Option<OneM2mSection>,
    topic_prefix: Option<String>,
    /// PEM file of the CA the broker's certificate chains to (with an
    /// `mqtts://` broker).
    tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (keep it 0600).
    tls_key: Option<PathBuf>,
    /// MQTT username.
    username: Option<String>,
    /// File whose first line is the MQTT password (else
    /// `SEALCAST_BROKER_PASSWORD`).
    password_file: Option<PathBuf>,
    key: PathBuf,
    state_dir: PathBuf,
    dap: String,
    headend_public_key: PathBuf,
    /// The headend's meter group this meter listens to (`sealcast device
    /// listen`; default "meters").
    meter_group: Option<String>,
    /// The audit log of the reports sent (default `<state_dir>/audit.jsonl`).
    audit_log: Option<PathBuf>,
    /// Rotate the audit log at this many KiB (default 16384).
    audit_max_kib: Option<u64>,
    /// Rotated audit segments kept (default 8).
    audit_keep: Option<usize>,
}

/// Loads one public key and checks it is `id`'s.
fn keyed(base: &Path, e: &KeyEntry) -> Result<PublicCredential> {
    let id = entity(&e.id)?;
    let credential = load_public_key(&resolve(base, &e.public_key))?;
    if *credential.id() != id {
        return Err(CliError::usage(format!(
            "{id}: the public key file {} is for {}",
            e.public_key.display(),
            credential.id()
        )));
    }
    Ok(credential)
}

/// The meters of `[[meter]]` entries and every `*.pub` of `dir`, without
/// duplicates, at most [`MAX_ANNOUNCED_METERS`].
fn meters(base: &Path, dir: Option<&Path>, listed: &[KeyEntry]) -> Result<Vec<PublicCredential>> {
    let mut out = std::collections::BTreeMap::new();
    for e in listed {
        let c = keyed(base, e)?;
        out.insert(c.id().clone(), c);
    }
    if let Some(dir) = dir {
        let dir = resolve(base, dir);
        let entries =
            std::fs::read_dir(&dir).map_err(|e| CliError::io("list directory", &dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| CliError::io("list directory", &dir, e))?
                .path();
            if path.extension().is_some_and(|x| x == "pub") {
                let c = load_public_key(&path)?;
                out.insert(c.id().clone(), c);
            }
            if out.len() > MAX_ANNOUNCED_METERS {
                return Err(CliError::usage(format!(
                    "more than {MAX_ANNOUNCED_METERS} meters: split them over several DAPs"
                )));
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Appends every reading to a file (and logs it).
#[derive(Debug)]
struct ReadingsFile {
    path: PathBuf,
}

impl ReadingHandler for ReadingsFile {
    fn reading(&self, r: &Reading) {
        LogReadings.reading(r);
        // Escaped: a reading's bytes cannot add lines or control characters.
        let line = format!(
            "meter={} seq={} dap={} reading={}{}\n",
            r.meter,
            r.seq.get(),
            r.dap,
            String::from_utf8_lossy(&r.value).escape_debug(),
            r.implausible.map_or_else(String::new, |why| format!(
                " flag=implausible:{}",
                why.as_str()
            ))
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "readings file not written");
        }
    }
}

/// Runs `sealcast headend serve`.
pub fn headend(args: &HeadendServeArgs) -> Result<()> {
    init_logs();
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    let credential = load_private_key(&resolve(&base, &config.key))?;
    let headend_id = credential.id().clone();
    if config.dap.is_empty() {
        return Err(CliError::usage(format!(
            "{}: no [[dap]] entries: the headend accepts batches only from DAPs it knows",
            args.config.display()
        )));
    }
    let daps = config
        .dap
        .iter()
        .map(|d| keyed(&base, d))
        .collect::<Result<Vec<_>>>()?;
    let meters = meters(&base, config.meters_dir.as_deref(), &config.meter)?;
    let n_meters = meters.len();
    let mut core = HeadendCore::new(credential, daps, meters, config.verify_meter_signatures)
        .map_err(|e| failed("cannot set up the headend", e))?;
    let rules = config
        .plausibility
        .iter()
        .enumerate()
        .map(|(i, r)| r.rule(i + 1))
        .collect::<Result<Vec<_>>>()?;
    core.set_plausibility(rules);
    let policy = config
        .misbehaviour
        .iter()
        .map(super::MisbehaviourEntry::rule)
        .collect::<Result<Vec<_>>>()?;
    let listings = operator_listings(&config.meter_status)?;
    let handler: Arc<dyn ReadingHandler> = match &args.readings {
        Some(path) => Arc::new(ReadingsFile { path: path.clone() }),
        None => Arc::new(LogReadings),
    };
    let topics = topics(config.topic_prefix.as_deref())?;
    let audit = super::audit_config(
        &base,
        &state_dir,
        "audit.jsonl",
        config.audit_log.as_deref(),
        config.audit_max_kib,
        config.audit_keep,
    )?;
    let link = link_config(
        config.transport,
        &broker_url(&config.broker, &base, &broker_security!(config))?,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, &headend_id)),
    )?;
    let config_path = args.config.clone();
    let downlink = config
        .downlink
        .as_ref()
        .map(|d| d.config(&state_dir))
        .transpose()?;
    let requests = requests_dir(&state_dir);
    runtime()?.block_on(async move {
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let transport = link.transport();
        let handle = headend::spawn(HeadendConfig {
            core,
            link,
            topics,
            handler,
            state_file: Some(DeviceStateFile::new(state_dir.join("headend.cbor"))),
            events,
            audit: Some(audit),
            policy,
            downlink,
        })
        .await
        .map_err(|e| failed("the headend could not start", e))?;
        info!(headend = %handle.id(), %transport, meters = n_meters, "headend service running");
        if !listings.is_empty() {
            handle
                .set_operator_status(listings)
                .await
                .map_err(|e| failed("cannot apply [[meter_status]]", e))?;
        }
        let mut failure = Box::pin(async {
            while let Some(e) = rx.recv().await {
                if let HeadendEvent::Failed(why) = e {
                    return why;
                }
            }
            "the headend task ended".to_owned()
        });
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| failed("cannot listen for SIGHUP", e))?;
        let mut stop_signal = Box::pin(wait_for_stop_signal());
        let mut poll = tokio::time::interval(REQUEST_POLL);
        loop {
            tokio::select! {
                r = &mut stop_signal => { r?; break; }
                why = &mut failure => return Err(failed("the headend stopped", why)),
                _ = poll.tick() => take_requests(&requests, &handle).await,
                _ = hangup.recv() => {
                    // Re-read the meters (meters_dir and [[meter]]): new ones
                    // are decrypted from now on, removed ones no longer.
                    let reloaded = read_config::<HeadendFile>(&config_path)
                        .and_then(|(c, b)| self::meters(&b, c.meters_dir.as_deref(), &c.meter));
                    match reloaded {
                        Ok(m) => {
                            let n = m.len();
                            match handle.set_meters(m).await {
                                Ok(c) => info!(meters = n, added = c.added, removed = c.removed, rekeyed = c.rekeyed, "SIGHUP: meters reloaded"),
                                Err(e) => warn!(error = %e, "SIGHUP: meters not reloaded; the headend keeps the previous set"),
                            }
                        }
                        Err(e) => warn!(error = %e, "SIGHUP: config not reloaded; the headend keeps the previous set"),
                    }
                    // And the operator's listings.
                    let listings = read_config::<HeadendFile>(&config_path)
                        .and_then(|(c, _)| operator_listings(&c.meter_status));
                    match listings {
                        Ok(l) if l.is_empty() => {}
                        Ok(l) => match handle.set_operator_status(l).await {
                            Ok(changed) => info!(changed, "SIGHUP: [[meter_status]] applied"),
                            Err(e) => warn!(error = %e, "SIGHUP: [[meter_status]] not applied; the list is unchanged"),
                        },
                        Err(e) => warn!(error = %e, "SIGHUP: [[meter_status]] not read; the list is unchanged"),
                    }
                }
            }
        }
        handle.stop().await;
        let s = handle.stats();
        info!(
            announcements = s.announcements,
            batches = s.batches,
            batches_refused = s.batches_refused,
            readings = s.readings,
            replayed = s.replayed,
            not_announced = s.not_announced,
            undecryptable = s.undecryptable,
            "headend stopped"
        );
        Ok(())
    })
}

/// How often a running headend looks for `configure-meters` requests.
const REQUEST_POLL: Duration = Duration::from_millis(250);

/// Where `sealcast headend configure-meters` leaves its requests for the
/// running headend (one file each, taken in name order).
fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("meter-config-requests")
}

/// One request to the running headend: `{"settings": {name: value}}`
/// (`configure-meters`) or `{"sa": {"change": "refresh" | "remove" |
/// "establish", "meters": [id, …]}}` (`headend sa …`).
#[derive(Debug, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadendRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sa: Option<SaRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transmission: Option<TxRequest>,
}

/// Meters to deactivate or re-activate, for these scopes (none: all).
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxRequest {
    deactivate: bool,
    meters: Vec<String>,
    scopes: Vec<String>,
}

/// A change of meters' security associations.
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaRequest {
    change: String,
    meters: Vec<String>,
}

fn sa_change_of(name: &str) -> Option<sealcast_metering::headend::SaChange> {
    use sealcast_metering::headend::SaChange;
    match name {
        "refresh" => Some(SaChange::Refresh),
        "remove" => Some(SaChange::Remove),
        "establish" => Some(SaChange::Establish),
        _ => None,
    }
}

/// Carries out one request; the answer's text.
async fn carry_out(req: HeadendRequest, handle: &headend::HeadendHandle) -> Result<String, String> {
    match req {
        HeadendRequest {
            settings: Some(settings),
            sa: None,
            transmission: None,
        } => handle
            .configure_meters(settings)
            .await
            .map(|v| v.to_string())
            .map_err(|e| e.to_string()),
        HeadendRequest {
            settings: None,
            sa: None,
            transmission: Some(tx),
        } => {
            let meters = tx
                .meters
                .iter()
                .map(|m| sealcast_core::ids::EntityId::new(m).map_err(|e| format!("{m:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let scopes = tx
                .scopes
                .iter()
                .map(|s| {
                    sealcast_group::transmission::Scope::parse(s).map_err(|e| format!("{s:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            handle
                .transmission(tx.deactivate, meters, scopes)
                .await
                .map(|lines| lines.join("\n"))
                .map_err(|e| e.to_string())
        }
        HeadendRequest {
            settings: None,
            sa: Some(sa),
            transmission: None,
        } => {
            let change = sa_change_of(&sa.change)
                .ok_or_else(|| format!("unknown change {:?}", sa.change))?;
            let meters = sa
                .meters
                .iter()
                .map(|m| sealcast_core::ids::EntityId::new(m).map_err(|e| format!("{m:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            handle
                .change_sa(change, meters)
                .await
                .map(|lines| lines.join("\n"))
                .map_err(|e| e.to_string())
        }
        _ => Err("a request names one of settings, sa or transmission".to_owned()),
    }
}

/// Takes the waiting requests in name order: each issued as the next
/// configuration, then answered with `<name>.done` (its version) or
/// `<name>.refused` (why), and removed.
async fn take_requests(dir: &Path, handle: &headend::HeadendHandle) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for path in names {
        let outcome = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<HeadendRequest>(&b).map_err(|e| e.to_string()))
        {
            Ok(req) => carry_out(req, handle).await,
            Err(e) => Err(format!("unreadable request: {e}")),
        };
        let (answer, text) = match &outcome {
            Ok(v) => (path.with_extension("done"), v.clone()),
            Err(e) => {
                warn!(request = %path.display(), error = %e, "operator request refused");
                (path.with_extension("refused"), e.clone())
            }
        };
        if let Err(e) = crate::files::write_atomic(
            &answer,
            text.as_bytes(),
            0o600,
            crate::files::Overwrite::Replace,
        ) {
            warn!(path = %answer.display(), error = %e, "answer to a configuration request not written");
        }
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(request = %path.display(), error = %e, "configuration request not removed; it would be taken again");
        }
    }
}

/// Arguments of `sealcast headend configure-meters`.
#[derive(Debug, Args)]
pub struct ConfigureMetersArgs {
    /// The headend's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A setting of the new configuration, NAME=VALUE (repeat; the new
    /// configuration replaces the previous one whole).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Seconds to wait for the running headend to issue it.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub wait: u64,
}

/// Runs `sealcast headend configure-meters`: hands the configuration to
/// the running headend (a request file in its state directory) and waits
/// until it was issued.
pub fn configure_meters(args: &ConfigureMetersArgs) -> Result<()> {
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    if config.downlink.is_none() {
        return Err(CliError::usage(format!(
            "{}: no [downlink] section: add one (and restart the headend) to configure meters",
            args.config.display()
        )));
    }
    let mut settings = std::collections::BTreeMap::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(CliError::usage(format!("--set {s:?}: use NAME=VALUE")));
        };
        sealcast_metering::downlink::check_setting(k, v)
            .map_err(|e| CliError::usage(format!("--set {s:?}: {e}")))?;
        if settings.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(CliError::usage(format!("--set: {k} given twice")));
        }
    }
    if settings.len() > sealcast_metering::downlink::MAX_SETTINGS {
        return Err(CliError::usage("at most 64 settings"));
    }
    let state_dir = resolve(&base, &config.state_dir);
    let v = hand_to_headend(
        &state_dir,
        &HeadendRequest {
            settings: Some(settings),
            ..HeadendRequest::default()
        },
        args.wait,
        "the configuration",
    )?;
    say(&format!(
        "meter configuration version {v} issued; the headend sends it through its DAPs until every meter confirms (sealcast headend meter-config)"
    ));
    Ok(())
}

/// Leaves `request` for the running headend (a file in its state
/// directory) and waits up to `wait` seconds for its answer.
fn hand_to_headend(
    state_dir: &Path,
    request: &HeadendRequest,
    wait: u64,
    what: &str,
) -> Result<String> {
    let dir = requests_dir(state_dir);
    create_dir(&dir)?;
    let name = format!(
        "{:013}-{}.json",
        crate::system::now()?.get(),
        std::process::id()
    );
    let path = dir.join(&name);
    let body = serde_json::to_vec(request).map_err(|e| failed("cannot encode the request", e))?;
    crate::files::write_atomic(&path, &body, 0o600, crate::files::Overwrite::Refuse)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let done = path.with_extension("done");
        let refused = path.with_extension("refused");
        if let Ok(v) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            return Ok(v);
        }
        if let Ok(why) = std::fs::read_to_string(&refused) {
            let _ = std::fs::remove_file(&refused);
            return Err(CliError::other(format!(
                "the headend refused {what}: {why}"
            )));
        }
        if std::time::Instant::now() >= deadline {
            say(&format!(
                "queued in {}: the headend has not taken it within {wait} s (is it running?); it carries it out when it runs",
                path.display(),
            ));
            return Err(CliError::other(format!("{what}: not carried out yet")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sealcast headend sa …`: the meters' security associations.
#[derive(Debug, clap::Subcommand)]
pub enum SaCommand {
    /// Show each meter's association: its epoch, whether it is
    /// established, pending (refreshed, waiting for the meter's first
    /// report under it) or removed, and when it changed.
    ///
    /// Example: sealcast headend sa show --config headend.toml --json
    Show(SaShowArgs),
    /// Refresh meters' associations: a new epoch with a fresh key of the
    /// headend's, sent to each meter through its DAP (which cannot forge
    /// it); the previous epoch's reports are still opened until the
    /// meter's first report under the new one, then its key is erased.
    ///
    /// Example: sealcast headend sa refresh --config headend.toml --meter meter-1
    Refresh(SaChangeArgs),
    /// Remove meters' associations: their reports are refused from now
    /// on, and each meter is told (signed) to stop reporting.
    ///
    /// Example: sealcast headend sa remove --config headend.toml --meter meter-1
    Remove(SaChangeArgs),
    /// Establish a new association for meters whose association was
    /// removed (a new epoch with a fresh key, as refresh).
    ///
    /// Example: sealcast headend sa establish --config headend.toml --meter meter-1
    Establish(SaChangeArgs),
}

/// Arguments of `sealcast headend sa show`.
#[derive(Debug, Args)]
pub struct SaShowArgs {
    /// The headend's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Only this meter (repeat for more).
    #[arg(long = "meter", value_name = "ID")]
    pub meters: Vec<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `sealcast headend sa refresh|remove|establish`.
#[derive(Debug, Args)]
pub struct SaChangeArgs {
    /// The headend's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The meter (repeat for more).
    #[arg(long = "meter", value_name = "ID", required_unless_present = "all")]
    pub meters: Vec<String>,
    /// Every meter the headend holds a credential for.
    #[arg(long, conflicts_with = "meters")]
    pub all: bool,
    /// Seconds to wait for the running headend to carry it out.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub wait: u64,
}

/// The meters a command names: all the headend holds (`--all`), or each
/// `--meter`, which must be one of them.
fn named_meters(
    config: &HeadendFile,
    base: &Path,
    config_path: &Path,
    all: bool,
    named: &[String],
) -> Result<Vec<String>> {
    let held = self::meters(base, config.meters_dir.as_deref(), &config.meter)?;
    if all {
        return Ok(held.iter().map(|m| m.id().as_str().to_owned()).collect());
    }
    for m in named {
        if !held.iter().any(|h| h.id().as_str() == m) {
            return Err(CliError::usage(format!(
                "--meter {m}: not a meter of this headend (meters_dir and [[meter]] of {})",
                config_path.display()
            )));
        }
    }
    Ok(named.to_vec())
}

/// Runs `sealcast headend sa …`.
pub fn headend_sa(cmd: &SaCommand) -> Result<()> {
    let (args, change) = match cmd {
        SaCommand::Show(args) => return headend_sa_show(args),
        SaCommand::Refresh(a) => (a, "refresh"),
        SaCommand::Remove(a) => (a, "remove"),
        SaCommand::Establish(a) => (a, "establish"),
    };
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    if config.downlink.is_none() {
        return Err(CliError::usage(format!(
            "{}: no [downlink] section: association updates travel with the downlink; add one (and restart the headend)",
            args.config.display()
        )));
    }
    let meters = named_meters(&config, &base, &args.config, args.all, &args.meters)?;
    let state_dir = resolve(&base, &config.state_dir);
    let lines = hand_to_headend(
        &state_dir,
        &HeadendRequest {
            sa: Some(SaRequest {
                change: change.to_owned(),
                meters,
            }),
            ..HeadendRequest::default()
        },
        args.wait,
        &format!("the association {change}"),
    )?;
    for l in lines.lines() {
        say(l);
    }
    say(
        "each meter is sent the update through its DAP until it reports under the new epoch (sealcast headend sa show)",
    );
    Ok(())
}

fn headend_sa_show(args: &SaShowArgs) -> Result<()> {
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    let held = self::meters(&base, config.meters_dir.as_deref(), &config.meter)?;
    let state_dir = resolve(&base, &config.state_dir);
    let file = DeviceStateFile::new(state_dir.join("headend.cbor"));
    let saved = match file
        .read()
        .map_err(|e| failed("cannot read the headend's state", e))?
    {
        Some(bytes) => sealcast_metering::headend::saved_associations(&bytes)
            .map_err(|e| failed("cannot read the headend's state", e))?,
        None => Default::default(),
    };
    let mut rows = Vec::new();
    for m in held
        .iter()
        .filter(|m| args.meters.is_empty() || args.meters.iter().any(|x| x == m.id().as_str()))
    {
        let s = saved
            .get(m.id())
            .copied()
            .unwrap_or(sealcast_metering::sa::SaStatus {
                epoch: 0,
                phase: sealcast_metering::sa::SaPhase::Established,
                previous: None,
                changed: sealcast_core::ids::UnixMillis::new(0),
                confirmed: None,
            });
        rows.push((m.id().clone(), s));
    }
    for m in &args.meters {
        if !rows.iter().any(|(id, _)| id.as_str() == m) {
            return Err(CliError::usage(format!(
                "--meter {m}: not a meter of this headend"
            )));
        }
    }
    if args.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, s)| {
                serde_json::json!({
                    "meter": m.as_str(),
                    "epoch": s.epoch,
                    "state": s.phase.as_str(),
                    "previous_epoch": s.previous,
                    "changed_ms": s.changed.get(),
                    "confirmed_ms": s.confirmed.map(|c| c.get()),
                })
            })
            .collect();
        say(&serde_json::json!({ "meters": v }).to_string());
        return Ok(());
    }
    for (m, s) in &rows {
        let detail = match (s.epoch, s.phase) {
            (0, _) => "the static key from enrolment".to_owned(),
            (_, sealcast_metering::sa::SaPhase::Pending) => format!(
                "waiting for the meter's first report under it{}",
                s.previous
                    .map_or(String::new(), |p| format!("; epoch {p} still opened"))
            ),
            (_, sealcast_metering::sa::SaPhase::Removed) => "every report refused".to_owned(),
            _ => "in use".to_owned(),
        };
        say(&format!(
            "{m}: epoch {} {} ({detail})",
            s.epoch,
            s.phase.as_str()
        ));
    }
    Ok(())
}

/// Arguments of `sealcast headend deactivate|activate`.
#[derive(Debug, Args)]
pub struct MeterTxArgs {
    /// The headend's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The meter (repeat for more).
    #[arg(long = "meter", value_name = "ID", required_unless_present_any = ["all", "daps"])]
    pub meters: Vec<String>,
    /// A DAP of the headend (`[[dap]]`; repeat for more): a deactivated DAP
    /// forwards no meter's report (and sends no misbehaviour report) until
    /// it is re-activated.
    #[arg(long = "dap", value_name = "ID")]
    pub daps: Vec<String>,
    /// Every meter the headend holds a credential for.
    #[arg(long, conflicts_with = "meters")]
    pub all: bool,
    /// What to stop or resume: `report` (a meter's readings; a DAP's
    /// forwarding of them) or `all` (default: everything but
    /// confirmations, which comes to the same).
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Seconds to wait for the running headend to issue it.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub wait: u64,
}

/// Runs `sealcast headend deactivate` (`deactivate`) or `activate`.
pub fn headend_transmission(args: &MeterTxArgs, deactivate: bool) -> Result<()> {
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    if config.downlink.is_none() && (args.all || !args.meters.is_empty()) {
        return Err(CliError::usage(format!(
            "{}: no [downlink] section: transmission orders reach meters with the downlink; add one (and restart the headend)",
            args.config.display()
        )));
    }
    for d in &args.daps {
        if !config.dap.iter().any(|k| k.id == *d) {
            return Err(CliError::usage(format!(
                "--dap {d}: not a [[dap]] of {}",
                args.config.display()
            )));
        }
    }
    for k in &args.kinds {
        if !matches!(k.as_str(), "report" | "all") {
            return Err(CliError::usage(format!(
                "--kind {k}: a meter sends readings: use report or all"
            )));
        }
    }
    let meters = named_meters(&config, &base, &args.config, args.all, &args.meters)?;
    let mut meters = meters;
    meters.extend(args.daps.iter().cloned());
    let state_dir = resolve(&base, &config.state_dir);
    let verb = if deactivate {
        "deactivation"
    } else {
        "activation"
    };
    let lines = hand_to_headend(
        &state_dir,
        &HeadendRequest {
            transmission: Some(TxRequest {
                deactivate,
                meters,
                scopes: args.kinds.clone(),
            }),
            ..HeadendRequest::default()
        },
        args.wait,
        &format!("the {verb}"),
    )?;
    for l in lines.lines() {
        say(l);
    }
    say(
        "each meter acknowledges through its DAP, each DAP directly (sealcast headend transmission)",
    );
    Ok(())
}

/// Runs `sealcast headend transmission`: each meter's order and whether it
/// acknowledged it, from the headend's state directory.
pub fn headend_transmission_show(args: &MeterConfigArgs) -> Result<()> {
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    let orders = sealcast_node::meter_orders::MeterOrders::read(&DeviceStateFile::new(
        state_dir.join(sealcast_node::meter_orders::METER_ORDERS_FILE),
    ))
    .map_err(|e| failed("cannot read the meters' transmission orders", e))?;
    let rows: Vec<serde_json::Value> = orders
        .all()
        .map(|(o, acked)| {
            serde_json::json!({
                "meter": o.node.as_str(),
                "version": o.version,
                "stopped": o.stopped.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "reports": sealcast_group::transmission::allows(&o.stopped, sealcast_group::transmission::TxKind::Report, None),
                "acknowledged": acked == Some(o.version),
            })
        })
        .collect();
    if args.json {
        say(&serde_json::json!({ "meters": rows }).to_string());
        return Ok(());
    }
    if rows.is_empty() {
        say("no transmission order issued: every meter reports");
    }
    for (o, acked) in orders.all() {
        say(&format!(
            "{}: order version {}, stopped {}{}",
            o.node,
            o.version,
            sealcast_group::transmission::describe(&o.stopped),
            if acked == Some(o.version) {
                " (acknowledged)"
            } else {
                " (not acknowledged yet: sent again)"
            }
        ));
    }
    Ok(())
}

/// Runs `sealcast device transmission`: the order this meter holds.
pub fn device_transmission(args: &MeterConfigArgs) -> Result<()> {
    let (config, base): (MeterFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    let control = sealcast_node::meter::read_transmission(&DeviceStateFile::new(
        state_dir.join("meter.cbor"),
    ))
    .map_err(|e| failed("cannot read the meter's transmission order", e))?;
    let reports = control.allows(sealcast_group::transmission::TxKind::Report, None);
    let (version, stopped) = control.held().map_or((0, Vec::new()), |o| {
        (
            o.version,
            o.stopped.iter().map(ToString::to_string).collect(),
        )
    });
    if args.json {
        say(
            &serde_json::json!({"version": version, "stopped": stopped, "reports": reports})
                .to_string(),
        );
        return Ok(());
    }
    say(&if reports {
        format!("readings are sent (order version {version})")
    } else {
        format!(
            "deactivated by the headend (order version {version}, stopped {}): no readings are sent",
            stopped.join(",")
        )
    });
    Ok(())
}

/// Runs `sealcast device sa`: the meter's association with its headend.
pub fn device_sa(args: &MeterConfigArgs) -> Result<()> {
    let (config, base): (MeterFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    let sa = sealcast_node::meter::read_sa(&DeviceStateFile::new(state_dir.join("meter.cbor")))
        .map_err(|e| failed("cannot read the meter's association", e))?;
    let state = if sa.is_removed() {
        "removed"
    } else {
        "established"
    };
    if args.json {
        say(&serde_json::json!({
            "epoch": sa.epoch,
            "state": state,
            "issued_ms": sa.issued.get(),
        })
        .to_string());
        return Ok(());
    }
    say(&match (sa.epoch, sa.is_removed()) {
        (0, _) => "security association epoch 0 (the static key from enrolment)".to_owned(),
        (e, true) => format!(
            "security association removed by the headend (epoch {e}): no reports until it establishes a new one"
        ),
        (e, false) => format!("security association epoch {e} (refreshed by the headend)"),
    });
    Ok(())
}

/// Arguments of `sealcast headend meter-config` and `sealcast device meter-config`.
#[derive(Debug, Args)]
pub struct MeterConfigArgs {
    /// The headend's (or the meter's) TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `sealcast headend meter-config`: the configuration in force and
/// what each meter confirmed, from the headend's saved downlink state.
pub fn headend_meter_config(args: &MeterConfigArgs) -> Result<()> {
    let (config, base): (HeadendFile, _) = read_config(&args.config)?;
    let credential = load_private_key(&resolve(&base, &config.key))?;
    let state_dir = resolve(&base, &config.state_dir);
    let file = DeviceStateFile::new(state_dir.join(sealcast_node::downlink::HEADEND_DOWNLINK_FILE));
    let Some(bytes) = file
        .read()
        .map_err(|e| failed("cannot read the downlink state", e))?
    else {
        return Err(CliError::other(format!(
            "{}: no downlink state yet (the headend creates it when it starts with a [downlink] section)",
            file.path().display()
        )));
    };
    let state = sealcast_metering::downlink::HeadendDownlink::import(&bytes, &credential)
        .map_err(|e| failed("cannot read the downlink state", e))?;
    let meters: Vec<serde_json::Value> = state
        .acks()
        .iter()
        .map(|(m, a)| {
            let (key, cfg) = state.is_current(m);
            serde_json::json!({"meter": m.as_str(), "epoch": a.epoch, "version": a.version, "current": key && cfg})
        })
        .collect();
    let settings = state
        .config()
        .map(|c| c.settings.clone())
        .unwrap_or_default();
    if args.json {
        let v = serde_json::json!({
            "group": state.group().name().to_string(),
            "epoch": state.epoch().get(),
            "version": state.version(),
            "settings": settings,
            "meters": meters,
        });
        say(&v.to_string());
        return Ok(());
    }
    say(&format!(
        "meter group {}: key epoch {}, configuration version {}",
        state.group().name(),
        state.epoch(),
        state.version()
    ));
    for (k, v) in &settings {
        say(&format!("  {k} = {v}"));
    }
    for (m, a) in state.acks() {
        let (key, cfg) = state.is_current(m);
        say(&format!(
            "  {m}: epoch {} version {}{}",
            a.epoch,
            a.version,
            if key && cfg { " (current)" } else { "" }
        ));
    }
    Ok(())
}

/// Runs `sealcast device meter-config`: the configuration this meter
/// applied, from its saved downlink state.
pub fn device_meter_config(args: &MeterConfigArgs) -> Result<()> {
    let (config, base): (MeterFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    let file = DeviceStateFile::new(state_dir.join(sealcast_node::downlink::METER_DOWNLINK_FILE));
    let state = sealcast_node::downlink::read_meter_state(&file)
        .map_err(|e| failed("cannot read the meter's downlink state", e))?
        .unwrap_or_default();
    let settings = state
        .config()
        .map(|c| c.settings.clone())
        .unwrap_or_default();
    if args.json {
        let v = serde_json::json!({
            "epoch": state.epoch(),
            "version": state.version(),
            "settings": settings,
        });
        say(&v.to_string());
        return Ok(());
    }
    say(&format!(
        "meter group key epoch {}, configuration version {}",
        state.epoch(),
        state.version()
    ));
    for (k, v) in &settings {
        say(&format!("  {k} = {v}"));
    }
    Ok(())
}

/// Runs `sealcast device listen`: a meter's downlink listener.
pub fn device_listen(args: &super::ServeArgs) -> Result<()> {
    init_logs();
    let (config, base): (MeterFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    let headend = load_public_key(&resolve(&base, &config.headend_public_key))?;
    let link = link_config(
        config.transport,
        &broker_url(&config.broker, &base, &broker_security!(config))?,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, headend.id())),
    )?;
    let topics = topics(config.topic_prefix.as_deref())?;
    let audit = |file: &str, own: Option<&Path>| {
        super::audit_config(
            &base,
            &state_dir,
            file,
            own,
            config.audit_max_kib,
            config.audit_keep,
        )
    };
    let report = MeterConfig {
        credential: load_private_key(&resolve(&base, &config.key))?,
        headend: headend.clone(),
        dap: entity(&config.dap)?,
        link: link.clone(),
        topics: topics.clone(),
        state_file: DeviceStateFile::new(state_dir.join("meter.cbor")),
        audit: Some(audit("audit.jsonl", config.audit_log.as_deref())?),
    };
    let listen = sealcast_node::downlink::MeterListenConfig {
        credential: load_private_key(&resolve(&base, &config.key))?,
        headend,
        group: meter_group(config.meter_group.as_deref())?,
        link,
        topics,
        state_file: DeviceStateFile::new(
            state_dir.join(sealcast_node::downlink::METER_DOWNLINK_FILE),
        ),
        report,
        // Apart from the reports' log: one writer per log.
        audit: Some(audit("downlink-audit.jsonl", None)?),
    };
    runtime()?.block_on(async move {
        let stop = async {
            if let Err(e) = wait_for_stop_signal().await {
                warn!(error = %e, "stop signal handling failed; stopping");
            }
        };
        sealcast_node::downlink::listen(listen, stop, |c| {
            say(&format!(
                "applied meter configuration version {}",
                c.version
            ));
        })
        .await
        .map_err(|e| failed("the meter's listener stopped", e))?;
        info!("meter listener stopped");
        Ok(())
    })
}

/// Whether `agent.toml` has a `[dap]` section (then [`agent_with_dap`] runs it).
pub fn has_dap_section(path: &Path) -> Result<bool> {
    // Only the presence of the table: the gateway part checks the rest of
    // a config without one (a CoAP gateway has no `broker`).
    let (config, _): (toml::Table, _) = read_config(path)?;
    Ok(config.contains_key("dap"))
}

/// Runs `sealcast agent serve` for an agent with a `[dap]` section: the
/// DAP, and the gateway node too when `manager_public_key` is set.
pub fn agent_with_dap(args: &ServeArgs) -> Result<()> {
    let (config, base): (AgentFile, _) = read_config(&args.config)?;
    let Some(section) = config.dap else {
        return Err(CliError::usage("no [dap] section"));
    };
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    if section.batch_size == 0 || section.batch_size > MAX_BATCH_REPORTS {
        return Err(CliError::usage(format!(
            "[dap] batch_size must be 1..={MAX_BATCH_REPORTS}"
        )));
    }
    if section.max_batch_delay_ms == 0 || section.max_batch_delay_ms > 60_000 {
        return Err(CliError::usage(
            "[dap] max_batch_delay_ms must be 1..=60000",
        ));
    }
    let credential = load_private_key(&resolve(&base, &config.key))?;
    let headend_id = entity(&section.headend)?;
    let headend = load_public_key(&resolve(&base, &section.headend_public_key))?;
    if *headend.id() != headend_id {
        return Err(CliError::usage(format!(
            "[dap] headend {headend_id}: the public key file is for {}",
            headend.id()
        )));
    }
    let load_meters = {
        let base = base.clone();
        move |s: &DapSection| meters(&base, s.meters_dir.as_deref(), &s.meter)
    };
    let meter_keys = load_meters(&section)?;
    let mut core = DapCore::new(credential, headend, section.group.clone(), meter_keys)
        .map_err(|e| failed("cannot set up the DAP", e))?;
    if let Some(per_minute) = section.max_reports_per_meter_per_minute {
        let limit = sealcast_node::dap::RateLimit {
            burst: section.max_report_burst.unwrap_or(per_minute),
            per_minute,
        };
        core.set_rate_limit(Some(limit)).map_err(|e| {
            CliError::usage(format!(
                "[dap] max_reports_per_meter_per_minute and max_report_burst must be at least 1 ({e})"
            ))
        })?;
    } else if section.max_report_burst.is_some() {
        return Err(CliError::usage(
            "[dap] max_report_burst needs max_reports_per_meter_per_minute",
        ));
    }
    if let Some(drift) = section.max_report_drift_s {
        if drift == 0 || drift > 366 * 86_400 {
            return Err(CliError::usage(
                "[dap] max_report_drift_s must be 1..=31622400 (seconds)",
            ));
        }
        core.set_max_drift(Some(drift * 1000));
    }
    if let Some(gap) = section.max_seq_gap {
        if gap < sealcast_node::meter::METER_SEQ_BLOCK {
            return Err(CliError::usage(format!(
                "[dap] max_seq_gap must be at least {} (a one-shot meter skips up to that many numbers between runs)",
                sealcast_node::meter::METER_SEQ_BLOCK
            )));
        }
        core.set_max_seq_gap(Some(gap));
    }
    let link = link_config(
        config.transport,
        &broker_url(&config.broker, &base, &broker_security!(config))?,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, &headend_id)),
    )?;
    let node = match &config.manager_public_key {
        Some(_) if link.transport() == sealcast_node::link::Transport::Coap => {
            return Err(CliError::usage(
                "on CoAP the DAP and the gateway cannot share one endpoint: run the gateway as an agent of its own (drop manager_public_key here)",
            ));
        }
        Some(_) => Some(
            node_config(
                &args.config,
                Arc::new(sealcast_node::device::LogHandler),
                true,
            )?
            .0,
        ),
        None => None,
    };
    let scheme = topics(config.topic_prefix.as_deref())?;
    let dap_audit = super::audit_config(
        &base,
        &state_dir,
        "dap-audit.jsonl",
        section.audit_log.as_deref(),
        section.audit_max_kib,
        section.audit_keep,
    )?;
    let config_path = args.config.clone();
    runtime()?.block_on(async move {
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = dap::spawn(DapConfig {
            core,
            link,
            topics: scheme,
            batch_size: section.batch_size,
            max_batch_delay: Duration::from_millis(section.max_batch_delay_ms),
            state_file: Some(DeviceStateFile::new(state_dir.join("dap.cbor"))),
            events,
            audit: Some(dap_audit),
            report_interval: match section.report_interval_ms.unwrap_or(2000) {
                0 => None,
                ms => Some(Duration::from_millis(ms.max(100))),
            },
            pool: section
                .pool
                .as_deref()
                .map(|p| {
                    sealcast_core::ids::EntityId::new(p)
                        .map_err(|e| CliError::usage(format!("[dap] pool {p:?}: {e}")))
                })
                .transpose()?,
        })
            .await
            .map_err(|e| failed("the DAP could not start", e))?;
        let gateway = match node {
            Some(node) => Some(
                sealcast_node::device::spawn(node)
                    .await
                    .map_err(|e| failed("the agent could not start", e))?,
            ),
            None => None,
        };
        info!(id = %handle.id(), "agent running as DAP");
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| failed("cannot listen for SIGHUP", e))?;
        let mut failure = Box::pin(async {
            while let Some(e) = rx.recv().await {
                if let DapEvent::Failed(why) = e {
                    return why;
                }
            }
            "the DAP task ended".to_owned()
        });
        let mut ctrl_c = Box::pin(wait_for_stop_signal());
        loop {
            tokio::select! {
                r = &mut ctrl_c => { r?; break; }
                why = &mut failure => return Err(failed("the DAP stopped", why)),
                _ = hangup.recv() => {
                    // Re-read the meters; a changed set is announced again.
                    let reloaded = read_config::<AgentFile>(&config_path)
                        .and_then(|(c, _)| c.dap.ok_or_else(|| CliError::usage("no [dap] section")))
                        .and_then(|s| load_meters(&s));
                    match reloaded {
                        Ok(m) => {
                            let n = m.len();
                            match handle.set_meters(m).await {
                                Ok(changed) => info!(meters = n, changed, "SIGHUP: meters reloaded"),
                                Err(e) => warn!(error = %e, "SIGHUP: meters not reloaded"),
                            }
                        }
                        Err(e) => warn!(error = %e, "SIGHUP: config not reloaded"),
                    }
                }
            }
        }
        handle.stop().await;
        if let Some(g) = gateway {
            g.stop().await;
        }
        let s = handle.stats();
        info!(
            received = s.received,
            forwarded = s.forwarded,
            forged = s.forged,
            unknown = s.unknown,
            replayed = s.replayed,
            batches = s.batches,
            "agent stopped"
        );
        Ok(())
    })
}

/// Runs `sealcast device report`.
pub fn device_report(args: &ReportArgs) -> Result<()> {
    init_logs();
    if args.count == 0 || args.count > MAX_COUNT {
        return Err(CliError::usage(format!("--count must be 1..={MAX_COUNT}")));
    }
    let (config, base): (MeterFile, _) = read_config(&args.config)?;
    let state_dir = resolve(&base, &config.state_dir);
    create_dir(&state_dir)?;
    let headend = load_public_key(&resolve(&base, &config.headend_public_key))?;
    let link = link_config(
        config.transport,
        &broker_url(&config.broker, &base, &broker_security!(config))?,
        config.coap.as_ref(),
        config.onem2m.as_ref().map(|o| (o, headend.id())),
    )?;
    let meter = MeterConfig {
        credential: load_private_key(&resolve(&base, &config.key))?,
        headend,
        dap: entity(&config.dap)?,
        link,
        topics: topics(config.topic_prefix.as_deref())?,
        state_file: DeviceStateFile::new(state_dir.join("meter.cbor")),
        audit: Some(super::audit_config(
            &base,
            &state_dir,
            "audit.jsonl",
            config.audit_log.as_deref(),
            config.audit_max_kib,
            config.audit_keep,
        )?),
    };
    let readings: Vec<Vec<u8>> = (0..args.count)
        .map(|n| args.reading.replace("{n}", &n.to_string()).into_bytes())
        .collect();
    let sent = runtime()?
        .block_on(report_once(meter, &readings))
        .map_err(|e| failed("the report was not sent", e))?;
    for (seq, len) in sent {
        say(&format!(
            "sent report to {} seq={seq} ({len} bytes)",
            config.dap
        ));
    }
    Ok(())
}

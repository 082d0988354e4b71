//! The meter's one-shot sender behind `sealcast device report`:
//! [`report_once`] resumes the sequence reservation from the meter's state
//! file, writes each new reservation before using it, seals with
//! [`Meter`] (in `sealcast-metering`) under the security association in
//! force ([`SA_FILE`]) and sends to the DAP over the link.

use crate::link::{Interest, Link, LinkConfig};
use sealcast_core::credential::{EntityCredential, PublicCredential};
use sealcast_core::ids::EntityId;
use sealcast_core::target::{AgentChannel, TopicScheme};
pub use sealcast_metering::meter::{
    METER_SEQ_BLOCK, Meter, PAIRWISE_ALG, decode_state, encode_state,
};
use sealcast_metering::sa::MeterSa;
use sealcast_store::DeviceStateFile;

use crate::Result;
use crate::runtime::now;

/// File name of a meter's security association with its headend, beside
/// its sequence state (public values only; 0600 like every state file).
pub const SA_FILE: &str = "pairwise-sa.cbor";

/// The association file beside the meter's sequence state `state_file`.
pub fn sa_file(state_file: &DeviceStateFile) -> DeviceStateFile {
    DeviceStateFile::new(state_file.path().with_file_name(SA_FILE))
}

/// File name of the transmission order a meter holds from its headend
/// (`sealcast_group::transmission`; 0600).
pub const TRANSMISSION_FILE: &str = "transmission.cbor";

/// The transmission-order file beside the meter's sequence state.
pub fn transmission_file(state_file: &DeviceStateFile) -> DeviceStateFile {
    DeviceStateFile::new(state_file.path().with_file_name(TRANSMISSION_FILE))
}

/// The transmission order the meter holds (none: it may send everything).
pub fn read_transmission(
    state_file: &DeviceStateFile,
) -> Result<sealcast_group::transmission::TransmissionControl> {
    read_order_file(&transmission_file(state_file))
}

/// Writes the transmission order the meter holds.
pub fn write_transmission(
    state_file: &DeviceStateFile,
    control: &sealcast_group::transmission::TransmissionControl,
) -> Result<()> {
    write_order_file(&transmission_file(state_file), control)
}

/// Reads a held transmission order from `file` (a meter's or a DAP's;
/// absent: none).
pub fn read_order_file(
    file: &DeviceStateFile,
) -> Result<sealcast_group::transmission::TransmissionControl> {
    use sealcast_group::transmission::TransmissionControl;
    match file.read()? {
        Some(bytes) => {
            let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).map_err(|_| {
                crate::Error::Runtime(format!(
                    "{}: not a transmission order this version wrote",
                    file.path().display()
                ))
            })?;
            Ok(TransmissionControl::from_value(&value)?)
        }
        None => Ok(TransmissionControl::new()),
    }
}

/// Writes a held transmission order to `file` (0600, atomically).
pub fn write_order_file(
    file: &DeviceStateFile,
    control: &sealcast_group::transmission::TransmissionControl,
) -> Result<()> {
    let mut out = Vec::new();
    ciborium::into_writer(&control.to_value()?, &mut out)
        .map_err(|e| crate::Error::Runtime(format!("transmission order not encoded: {e}")))?;
    Ok(file.write(&out)?)
}

/// The meter's saved association (epoch 0, the static key, when it never
/// received an update).
pub fn read_sa(state_file: &DeviceStateFile) -> Result<MeterSa> {
    match sa_file(state_file).read()? {
        Some(bytes) => Ok(MeterSa::decode(&bytes)?),
        None => Ok(MeterSa::default()),
    }
}

/// What a one-shot meter needs.
pub struct MeterConfig {
    /// The meter's credential.
    pub credential: EntityCredential,
    /// The headend its readings are encrypted for.
    pub headend: PublicCredential,
    /// The DAP it reports through.
    pub dap: EntityId,
    /// How it reaches its DAP (MQTT or CoAP).
    pub link: LinkConfig,
    /// Topic scheme.
    pub topics: TopicScheme,
    /// Where its sequence reservation persists.
    pub state_file: DeviceStateFile,
    /// Its audit log of the reports it sent (None: none).
    pub audit: Option<crate::audit::AuditConfig>,
}

impl core::fmt::Debug for MeterConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MeterConfig")
            .field("id", self.credential.id())
            .field("headend", self.headend.id())
            .field("dap", &self.dap)
            .field("transport", &self.link.transport())
            .finish_non_exhaustive()
    }
}

impl MeterConfig {
    /// A second copy (the credential copied through its encoding; both
    /// copies zeroize on drop): the downlink listener sends each
    /// confirmation with one.
    pub fn copy(&self) -> Result<Self> {
        let key = self.credential.to_cose_key_set()?;
        Ok(Self {
            credential: EntityCredential::from_cose_key_set(&key)?,
            headend: self.headend.clone(),
            dap: self.dap.clone(),
            link: self.link.clone(),
            topics: self.topics.clone(),
            state_file: self.state_file.clone(),
            audit: self.audit.clone(),
        })
    }
}

/// Reports in flight at once to the DAP on CoAP: the DAP answers each one
/// only when its batch was forwarded.
const REPORTS_IN_FLIGHT: usize = 64;

/// Seals each reading and sends it to the DAP's report target, with
/// sequence numbers from (and reservations written to) the meter's state
/// file, each reservation on disk before a number of it is used. Must not
/// run twice at once for one meter. Returns once every report was taken
/// (MQTT: acknowledged by the broker; CoAP: answered by the DAP after it
/// forwarded the report's batch), with the sequence number and size of
/// each report sent; fails if any was refused or unanswered.
/// Refused (before anything is sealed) while the headend's transmission
/// order stops the meter's reports.
pub async fn report_once(config: MeterConfig, readings: &[Vec<u8>]) -> Result<Vec<(u64, usize)>> {
    send_reports(config, readings, true).await
}

/// Sends one confirmation to the headend (the downlink's or a transmission
/// order's acknowledgement) as a report: sent whatever the transmission
/// order stops, so a deactivated meter can still be re-activated.
pub async fn report_confirmation(
    config: MeterConfig,
    plaintext: Vec<u8>,
) -> Result<Vec<(u64, usize)>> {
    send_reports(config, &[plaintext], false).await
}

async fn send_reports(
    config: MeterConfig,
    readings: &[Vec<u8>],
    are_readings: bool,
) -> Result<Vec<(u64, usize)>> {
    let file = config.state_file;
    // Read, reserve and write under the file's lock: two reports of one
    // meter at once never share a sequence number.
    let _lock = file.lock(crate::device::STATE_LOCK_WAIT)?;
    if are_readings {
        let control = read_transmission(&file)?;
        if !control.allows(sealcast_group::transmission::TxKind::Report, None) {
            let version = control.held().map_or(0, |o| o.version);
            return Err(crate::Error::Runtime(format!(
                "this meter is deactivated by its headend (transmission order version {version} stops its reports): no reading is sent; the headend re-activates it with `sealcast headend activate --meter {}`",
                config.credential.id()
            )));
        }
    }
    let limit = match file.read()? {
        Some(bytes) => decode_state(&bytes)?,
        None => 0,
    };
    // Opened under the state file's lock: one writer per log.
    let mut audit = config
        .audit
        .as_ref()
        .map(crate::audit::NodeAudit::open)
        .transpose()?;
    let id = config.credential.id().clone();
    // The association in force (written by the listener under this lock).
    let sa = read_sa(&file)?;
    let mut meter = Meter::with_sa(config.credential, &config.headend, limit, &sa)?;
    let mut sealed = Vec::with_capacity(readings.len());
    for reading in readings {
        if let Some(limit) = meter.reservation_request() {
            file.write(&encode_state(limit)?)?;
            meter.confirm_reservation(limit)?;
        }
        sealed.push(meter.seal(reading, now())?);
    }
    let topic = config.topics.agent(&config.dap, AgentChannel::Report);
    // A client id of its own and a clean session: a one-shot sender never
    // takes over a service's session nor leaves one behind.
    let link_config = config
        .link
        .with_mqtt_client_id(&config.topics.client_id(&format!("{id}-report")))
        .with_persistent_session(false)
        .with_nstart(REPORTS_IN_FLIGHT);
    let (link, _inbox) = Link::connect(
        &id,
        &link_config,
        config.topics.clone(),
        Interest::send_only(),
    )
    .await?;
    let mut sent = Vec::with_capacity(sealed.len());
    for (i, (seq, bytes)) in sealed.into_iter().enumerate() {
        if i > 0 && i.is_multiple_of(crate::link::SEND_WINDOW) {
            link.flush(std::time::Duration::from_secs(60)).await?;
        }
        sent.push((seq.get(), bytes.len()));
        link.send_to(&config.dap, topic.clone(), bytes).await?;
    }
    // Each report waits for its batch (the DAP's batch delay) and may be
    // retransmitted; a minute covers thousands.
    let taken = link.flush(std::time::Duration::from_secs(60)).await;
    link.close(std::time::Duration::from_secs(10)).await;
    if let Some(a) = &mut audit {
        let outcome = match &taken {
            Ok(()) => "taken".to_owned(),
            Err(e) => format!("not confirmed ({e})"),
        };
        let entries: Vec<_> = sent
            .iter()
            .map(|(seq, len)| {
                crate::audit::entry(
                    crate::audit::Record::Sent,
                    None,
                    Some(&config.dap),
                    format!(
                        "report seq={seq} ({len} bytes) for {} under association epoch {}: {outcome}",
                        config.headend.id(),
                        sa.epoch
                    ),
                )
            })
            .collect();
        a.record_all(&entries);
    }
    taken?;
    Ok(sent)
}

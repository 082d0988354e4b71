//! The smart-metering deployment: meters report through a Data Aggregation
//! Point (DAP) to the utility headend over MQTT.
//!
//! Each meter encrypts its reading for the headend (pairwise key from
//! static-static X25519, no handshake) and signs the result. The DAP verifies
//! the meters' signatures in batches **without being able to read the
//! readings**, drops forgeries and replays (a sequence window per meter), and
//! forwards each batch signed by itself. The headend checks the DAP's
//! signature once per batch and decrypts every report end to end; the AEAD
//! under the pairwise key still authenticates each meter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ciborium::Value;
use ed25519_dalek::VerifyingKey;
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::ids::{EntityId, SeqNum};
use sealcast_core::replay::SeqWindow;
use sealcast_core::report::{
    PairwiseKey, open_report_unverified, seal_report, verify_reports_batch,
};
use sealcast_core::statement::{UnverifiedStatement, sign_statement};
use sealcast_mqtt::{AgentChannel, Bytes, MqttClient, MqttConfig, TopicScheme};

use crate::demo::{Check, DemoReport};
use crate::runtime::{now, os_rng};
use crate::{Error, Result};

/// Label of the DAP's signed batches.
pub const LABEL_BATCH: &str = "sealcast report batch v1";

/// Settings of the smart-meter demo.
#[derive(Clone, Debug)]
pub struct SmartMeterConfig {
    /// Meters (at least 2).
    pub meters: usize,
    /// Reports each meter sends.
    pub reports_per_meter: usize,
    /// An external MQTT broker URL; `None` starts the embedded one.
    pub broker: Option<String>,
}

impl Default for SmartMeterConfig {
    fn default() -> Self {
        Self {
            meters: 200,
            reports_per_meter: 3,
            broker: None,
        }
    }
}

fn encode_batch(reports: &[Vec<u8>]) -> Result<Vec<u8>> {
    let v = Value::Array(reports.iter().map(|r| Value::Bytes(r.clone())).collect());
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out)
        .map_err(|e| Error::Runtime(format!("batch encoding: {e}")))?;
    Ok(out)
}

fn decode_batch(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let bad = || Error::Runtime("malformed report batch".into());
    match ciborium::from_reader::<Value, _>(bytes).map_err(|_| bad())? {
        Value::Array(items) if items.len() <= 4096 => items
            .into_iter()
            .map(|i| match i {
                Value::Bytes(b) => Ok(b),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// Runs the smart-meter deployment; `log` receives progress lines.
pub async fn smart_meter(
    config: SmartMeterConfig,
    log: &mut dyn FnMut(&str),
) -> Result<DemoReport> {
    if config.meters < 2 || config.reports_per_meter == 0 {
        return Err(Error::Runtime(
            "the smart-meter demo needs at least 2 meters and 1 report each".into(),
        ));
    }
    let mut report = DemoReport::default();
    let started = Instant::now();
    let (_broker, url) = crate::runtime::broker(config.broker.as_deref()).await?;
    log(&format!("MQTT broker at {url}"));
    let topics = TopicScheme::new();
    let mut rng = os_rng()?;
    let headend = EntityCredential::generate(EntityId::new("headend")?, &mut rng);
    let dap = EntityCredential::generate(EntityId::new("dap-1")?, &mut rng);
    let meters: Vec<EntityCredential> = (0..config.meters)
        .map(|i| {
            Ok(EntityCredential::generate(
                EntityId::new(&format!("meter-{i:05}"))?,
                &mut rng,
            ))
        })
        .collect::<Result<_>>()?;
    // Enrolment (what the manager provisions): the DAP knows the meters'
    // signature keys; the headend knows the meters' key-agreement keys and the DAP.
    let dap_keys: BTreeMap<EntityId, VerifyingKey> = meters
        .iter()
        .map(|m| (m.id().clone(), m.signing_key().verifying_key()))
        .collect();
    let mut headend_pairwise = BTreeMap::new();
    for m in &meters {
        let k = PairwiseKey::derive(
            AeadAlg::A128Gcm,
            headend.agreement_secret(),
            m.public().agreement_key(),
            m.id(),
            headend.id(),
        )?;
        headend_pairwise.insert(m.id().clone(), k);
    }
    report.steps.push((
        format!("enrolment: {} meters, a DAP and a headend", meters.len()),
        started.elapsed(),
    ));
    log(&format!("== {}", report.steps[0].0));

    let report_topic = topics.agent(dap.id(), AgentChannel::Report);
    let batch_topic = topics.agent(dap.id(), AgentChannel::Batch);
    let (dap_client, mut dap_inbox) = MqttClient::connect(
        MqttConfig::from_url(&url, "dap-1")?.with_subscription(topics.agent_filter(dap.id())),
    )?;
    let (headend_client, mut headend_inbox) = MqttClient::connect(
        MqttConfig::from_url(&url, "headend")?.with_subscription(topics.agent_filter(dap.id())),
    )?;
    let (meter_client, _) = MqttClient::connect(MqttConfig::from_url(&url, "meters")?)?;
    dap_client.wait_subscribed(Duration::from_secs(10)).await?;
    headend_client
        .wait_subscribed(Duration::from_secs(10))
        .await?;

    // Meters report; an attacker adds forgeries and replays.
    let sent_at = Instant::now();
    let mut genuine = 0usize;
    let mut first_reports = Vec::new();
    for round in 0..config.reports_per_meter {
        for (i, m) in meters.iter().enumerate() {
            let pairwise = PairwiseKey::derive(
                AeadAlg::A128Gcm,
                m.agreement_secret(),
                headend.public().agreement_key(),
                m.id(),
                headend.id(),
            )?;
            let reading = format!("{} kWh", 1000 + i * 7 + round);
            let bytes = seal_report(
                m.id(),
                m.signing_key(),
                headend.id(),
                &pairwise,
                SeqNum::new(round as u64)?,
                now(),
                reading.as_bytes(),
            )?;
            if round == 0 && i < 5 {
                first_reports.push(bytes.clone());
            }
            meter_client
                .publish(report_topic.clone(), Bytes::from(bytes))
                .await?;
            genuine += 1;
        }
    }
    let forger = EntityCredential::generate(EntityId::new("mallory")?, &mut rng);
    let forgeries = (config.meters / 20).max(2);
    for i in 0..forgeries {
        // Claims to be meter i, signed with the forger's key.
        let victim = &meters[i % meters.len()];
        let pairwise = PairwiseKey::derive(
            AeadAlg::A128Gcm,
            forger.agreement_secret(),
            headend.public().agreement_key(),
            victim.id(),
            headend.id(),
        )?;
        let bytes = seal_report(
            victim.id(),
            forger.signing_key(),
            headend.id(),
            &pairwise,
            SeqNum::new(10_000 + i as u64)?,
            now(),
            b"0 kWh",
        )?;
        meter_client
            .publish(report_topic.clone(), Bytes::from(bytes))
            .await?;
    }
    let replays = first_reports.len();
    for r in &first_reports {
        meter_client
            .publish(report_topic.clone(), Bytes::from(r.clone()))
            .await?;
    }
    let expected_in = genuine + forgeries + replays;
    log(&format!(
        "meters sent {genuine} reports; the attacker {forgeries} forgeries and {replays} replays"
    ));

    // The DAP: batches of up to 64, verified together, forwarded signed.
    let mut windows: BTreeMap<EntityId, SeqWindow> = BTreeMap::new();
    let (mut received, mut accepted, mut forged_dropped, mut replay_dropped) =
        (0usize, 0usize, 0usize, 0usize);
    let mut verify_time = Duration::ZERO;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received < expected_in {
        let mut batch = Vec::new();
        while batch.len() < 64 && received + batch.len() < expected_in {
            match tokio::time::timeout_at(deadline, dap_inbox.next_message()).await {
                Ok(Some(m)) if m.topic == report_topic => {
                    batch.push(m.payload.to_vec());
                    let _ = m.ack.ack().await;
                }
                Ok(Some(m)) => {
                    let _ = m.ack.ack().await;
                }
                _ => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        received += batch.len();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        let verdicts = verify_reports_batch(&refs, headend.id(), |id| dap_keys.get(id));
        verify_time += t.elapsed();
        let mut forward = Vec::new();
        for (bytes, verdict) in batch.iter().zip(verdicts) {
            match verdict {
                Ok(v) => {
                    let h = v.header();
                    let window = windows.entry(h.reporter.clone()).or_default();
                    match window.check(h.seq).and_then(|token| window.commit(token)) {
                        Ok(()) => forward.push(bytes.clone()),
                        Err(_) => replay_dropped += 1,
                    }
                }
                Err(_) => forged_dropped += 1,
            }
        }
        accepted += forward.len();
        let signed = sign_statement(
            dap.id(),
            dap.signing_key(),
            LABEL_BATCH,
            &encode_batch(&forward)?,
        );
        dap_client
            .publish(batch_topic.clone(), Bytes::from(signed))
            .await?;
    }
    let verify_rate = if verify_time.is_zero() {
        0.0
    } else {
        received as f64 / verify_time.as_secs_f64()
    };
    let dap_done = sent_at.elapsed();
    report.steps.push((
        "meters report; DAP: batch verification, forgeries and replays dropped".into(),
        dap_done,
    ));
    log(&format!(
        "== DAP verified {received} reports in batches of up to 64 ({verify_rate:.0} reports/s of signature work)"
    ));

    // The headend: one DAP check per batch, then end-to-end decryption.
    let dap_public = dap.public();
    let (mut decrypted, mut undecryptable) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while decrypted + undecryptable < accepted {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, headend_inbox.next_message()).await
        else {
            break;
        };
        let payload = m.payload.to_vec();
        let _ = m.ack.ack().await;
        if m.topic != batch_topic {
            continue;
        }
        let statement = UnverifiedStatement::parse(&payload, 16 << 20)?;
        if statement.signer() != dap.id() {
            continue;
        }
        let batch = decode_batch(&statement.verify(dap_public.verifying_key(), LABEL_BATCH)?)?;
        for r in batch {
            let reporter = sealcast_core::report::peek_report(&r, headend.id()).map(|h| h.reporter);
            match reporter
                .ok()
                .and_then(|id| headend_pairwise.get(&id))
                .map(|k| open_report_unverified(&r, headend.id(), k))
            {
                Some(Ok(_reading)) => decrypted += 1,
                _ => undecryptable += 1,
            }
        }
    }
    report.steps.push((
        "headend: DAP checked once per batch, reports decrypted end to end".into(),
        sent_at.elapsed().saturating_sub(dap_done),
    ));
    log(&format!(
        "== headend decrypted {decrypted} readings ({:.0} ms after the first report)",
        sent_at.elapsed().as_millis()
    ));
    report.checks.push(Check {
        what: "reports the DAP received".into(),
        expected: expected_in,
        observed: received,
    });
    report.checks.push(Check {
        what: "genuine reports the DAP forwarded".into(),
        expected: genuine,
        observed: accepted,
    });
    report.checks.push(Check {
        what: "forged reports the DAP dropped".into(),
        expected: forgeries,
        observed: forged_dropped,
    });
    report.checks.push(Check {
        what: "replayed reports the DAP dropped".into(),
        expected: replays,
        observed: replay_dropped,
    });
    report.checks.push(Check {
        what: "readings the headend decrypted".into(),
        expected: genuine,
        observed: decrypted,
    });
    report.checks.push(Check {
        what: "reports the headend could not decrypt (must be none)".into(),
        expected: 0,
        observed: undecryptable,
    });
    report.rate = Some(verify_rate);
    Ok(report)
}

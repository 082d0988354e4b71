//! The MBMS-like bearer under CoAP multicast: `sealcast-bearer`'s state
//! machines, run by the CoAP link.
//!
//! One entity of a deployment — the gateway agent — is the **bearer
//! service** (the BM-SC role of TS 33.246). It entitles the devices of its
//! config: each gets the service's MSK by confirmable unicast on its
//! `d/<device>/bearer` target, protected by a per-device MUK (static-static
//! X25519 between the service's and the device's keys), again every
//! [`ServiceSetup::redeliver`] so that a restarted device gets it back.
//! Every group message then leaves the service as bearer frames: an in-band
//! key frame (the MTK under the MSK) when due, and a data frame — the COSE
//! object and its target, padded to a size bucket and encrypted under the
//! MTK — all as NON POSTs to the multicast group on the one Uri-Path
//! [`BEARER_PATH`]. Someone on the multicast address without the MSK sees
//! neither group ids, targets nor exact sizes.
//!
//! The other entities send their group messages (a sensor's alert, the
//! manager's join notices and tree rekeys) to the service by confirmable
//! unicast on the message's own target; the service puts them on the bearer
//! (and hands them to its own runtime, as if heard on the group). Members
//! accept group traffic only from the bearer: a clear multicast POST is
//! dropped.
//!
//! Revoking a device ([`BearerControl::set_devices`] without it; the agent
//! does it on SIGHUP) switches the service to a fresh MSK delivered only to
//! the devices still entitled: the revoked device is locked out of the
//! bearer at once, whatever its COSE group keys say. The bearer adds access
//! control and confidentiality of metadata on the multicast hop; it never
//! replaces the end-to-end COSE layer, which still protects every message.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sealcast_bearer::{
    BearerReceiver, BearerSender, MskDelivery, MskId, Muk, ReceiverConfig, SenderConfig, Topic,
};
use sealcast_core::credential::PublicCredential;
use sealcast_core::ids::EntityId;
use sealcast_store::DeviceStateFile;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{now, os_rng};
use crate::{Error, Result};

/// The Uri-Path of every bearer frame on the multicast group: one constant,
/// so the path tells an outsider nothing.
pub const BEARER_PATH: &str = "sealcast/v1/bearer";

/// How often a bearer service delivers its MSK again to every entitled
/// device by default.
pub const DEFAULT_REDELIVER: Duration = Duration::from_secs(60);

/// Derives the MUK the service shares with one device, from the service's
/// own credential (the link never holds the credential).
pub type MukForDevice =
    Arc<dyn Fn(&PublicCredential) -> sealcast_bearer::Result<Muk> + Send + Sync>;

/// Derives a device's MUK with its service, from the device's credential.
pub type OwnMuk = Arc<dyn Fn() -> sealcast_bearer::Result<Muk> + Send + Sync>;

/// Where an entity stands on the bearer of a CoAP deployment.
#[derive(Clone)]
pub enum BearerRole {
    /// This entity is the bearer service.
    Service(ServiceSetup),
    /// It receives the bearer of `service` and sends its group messages
    /// through it (a device, a sensor).
    Member {
        /// The bearer service.
        service: EntityId,
        /// Its MUK with the service.
        muk: OwnMuk,
    },
    /// It sends group messages through `service` and hears no multicast
    /// (the manager).
    Sender {
        /// The bearer service.
        service: EntityId,
    },
}

impl core::fmt::Debug for BearerRole {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Service(s) => f
                .debug_struct("Service")
                .field("devices", &s.devices.len())
                .field("redeliver", &s.redeliver)
                .finish_non_exhaustive(),
            Self::Member { service, .. } => f
                .debug_struct("Member")
                .field("service", service)
                .finish_non_exhaustive(),
            Self::Sender { service } => f.debug_struct("Sender").field("service", service).finish(),
        }
    }
}

/// A bearer service's settings.
#[derive(Clone)]
pub struct ServiceSetup {
    /// The devices entitled at start.
    pub devices: Vec<PublicCredential>,
    /// Its MUK with each device.
    pub muk: MukForDevice,
    /// How often every entitled device gets the MSK again.
    pub redeliver: Duration,
    /// Where the next MSK id persists (a restarted service must not reuse
    /// one: devices refuse ids at or below those they retired). None: in
    /// memory (the demo).
    pub msk_ids: Option<DeviceStateFile>,
    /// Changes to the entitled devices while the service runs.
    pub control: Arc<Mutex<Option<mpsc::Receiver<ControlMsg>>>>,
}

impl core::fmt::Debug for ServiceSetup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServiceSetup")
            .field("devices", &self.devices.len())
            .field("redeliver", &self.redeliver)
            .field("msk_ids", &self.msk_ids)
            .finish_non_exhaustive()
    }
}

/// Changes the entitled devices of a running bearer service.
#[derive(Clone, Debug)]
pub struct BearerControl {
    tx: mpsc::Sender<ControlMsg>,
}

/// A request to a running bearer service.
#[derive(Debug)]
pub struct ControlMsg {
    devices: Vec<PublicCredential>,
    reply: oneshot::Sender<Result<BearerChange>>,
}

impl ControlMsg {
    pub(super) fn into_parts(
        self,
    ) -> (Vec<PublicCredential>, oneshot::Sender<Result<BearerChange>>) {
        (self.devices, self.reply)
    }
}

/// What [`BearerControl::set_devices`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerChange {
    /// Devices newly entitled.
    pub entitled: Vec<EntityId>,
    /// Devices revoked (locked out: the service moved to a fresh MSK).
    pub revoked: Vec<EntityId>,
}

impl ServiceSetup {
    /// A service entitling `devices`, and the control to change them while
    /// it runs.
    pub fn new(
        devices: Vec<PublicCredential>,
        muk: MukForDevice,
        redeliver: Duration,
        msk_ids: Option<DeviceStateFile>,
    ) -> (Self, BearerControl) {
        let (tx, rx) = mpsc::channel(4);
        (
            Self {
                devices,
                muk,
                redeliver,
                msk_ids,
                control: Arc::new(Mutex::new(Some(rx))),
            },
            BearerControl { tx },
        )
    }
}

impl BearerControl {
    /// Entitles exactly `devices`: newcomers get the MSK; a device no longer
    /// listed is revoked, and the service moves to a fresh MSK delivered
    /// to the others only.
    pub async fn set_devices(&self, devices: Vec<PublicCredential>) -> Result<BearerChange> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ControlMsg { devices, reply })
            .await
            .map_err(|_| Error::Runtime("the bearer service is not running".into()))?;
        answer
            .await
            .map_err(|_| Error::Runtime("the bearer service stopped".into()))?
    }
}

/// The bearer's key schedule: the MTK's key frame goes before *every*
/// data frame (a key frame is about 100 bytes), so a member that restarted
/// or lost a datagram reads the very next command instead of waiting for
/// the next repetition; MTKs roll over every 4 096 frames or 60 s.
fn sender_config() -> SenderConfig {
    SenderConfig {
        key_frame_interval: 1,
        ..SenderConfig::default()
    }
}

fn encode_msk_state(next: MskId) -> Result<Vec<u8>> {
    Ok(sealcast_bearer::state::encode_next_msk(next))
}

fn decode_msk_state(bytes: &[u8]) -> Result<MskId> {
    sealcast_bearer::state::decode_next_msk(bytes).map_err(|e| Error::Runtime(e.to_string()))
}

/// A started service, its first MSK deliveries and its queue of frames.
pub(super) type Started = (
    Arc<Service>,
    Vec<MskDelivery>,
    mpsc::UnboundedReceiver<Vec<u8>>,
);

/// A running bearer service.
pub(super) struct Service {
    id: EntityId,
    sender: Mutex<BearerSender>,
    devices: Mutex<BTreeMap<EntityId, PublicCredential>>,
    muk: MukForDevice,
    msk_ids: Option<DeviceStateFile>,
    /// Frames in the order they must leave (a key frame before the data
    /// frames of its MTK).
    frames: mpsc::UnboundedSender<Vec<u8>>,
}

impl Service {
    /// Starts the sender (its first MSK id above every one used before)
    /// and entitles the devices; returns the MSK deliveries to send and the
    /// queue of frames for the multicast sender.
    pub(super) fn start(id: &EntityId, setup: &ServiceSetup) -> Result<Started> {
        let first = match &setup.msk_ids {
            Some(file) => match file.read()? {
                Some(bytes) => decode_msk_state(&bytes)?,
                None => MskId::new(1),
            },
            None => MskId::new(1),
        };
        let mut rng = os_rng()?;
        let sender = BearerSender::new(id.clone(), first, sender_config(), now(), &mut rng)
            .map_err(bearer_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let service = Arc::new(Self {
            id: id.clone(),
            sender: Mutex::new(sender),
            devices: Mutex::new(BTreeMap::new()),
            muk: Arc::clone(&setup.muk),
            msk_ids: setup.msk_ids.clone(),
            frames: tx,
        });
        // The first MSK's id reaches the disk before it is delivered.
        service.persist()?;
        let change = service.set_devices(setup.devices.clone())?;
        Ok((service, change.1, rx))
    }

    fn persist(&self) -> Result<()> {
        let next = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_msk_id();
        self.persist_above(next, 0)
    }

    /// Writes, as the first MSK id of a restarted service, the id `ahead`
    /// places after `next` (the ids `ahead` fresh MSKs will take are then
    /// never used again).
    fn persist_above(&self, next: Option<MskId>, ahead: u32) -> Result<()> {
        let Some(file) = &self.msk_ids else {
            return Ok(());
        };
        let used_up = || {
            Error::Runtime("the bearer service used up its MSK ids; start a new service id".into())
        };
        let first = next
            .and_then(|n| n.get().checked_add(ahead))
            .map(MskId::new)
            .ok_or_else(used_up)?;
        file.write(&encode_msk_state(first)?)?;
        Ok(())
    }

    /// Puts one group message on the bearer: protects it and queues its
    /// frames, in order.
    pub(super) fn protect(&self, target: &str, bytes: &[u8]) -> Result<()> {
        let topic = Topic::new(target).map_err(bearer_err)?;
        let mut rng = os_rng()?;
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let frames = sender
            .protect(&topic, bytes, now(), &mut rng)
            .map_err(bearer_err)?;
        for f in frames {
            // The queue's task ends only with the link.
            let _ = self.frames.send(f);
        }
        Ok(())
    }

    /// The current MSK again for every entitled device.
    pub(super) fn redeliver_all(&self) -> Result<Vec<MskDelivery>> {
        let mut rng = os_rng()?;
        let devices: Vec<EntityId> = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for d in devices {
            out.extend(sender.redeliver(&d, &mut rng).map_err(bearer_err)?);
        }
        Ok(out)
    }

    /// Entitles exactly `devices`; the deliveries to send.
    pub(super) fn set_devices(
        &self,
        devices: Vec<PublicCredential>,
    ) -> Result<(BearerChange, Vec<MskDelivery>)> {
        let mut rng = os_rng()?;
        let wanted: BTreeMap<EntityId, PublicCredential> =
            devices.into_iter().map(|d| (d.id().clone(), d)).collect();
        let mut current = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<EntityId> = current
            .keys()
            .filter(|d| !wanted.contains_key(*d))
            .cloned()
            .collect();
        // Everything that can fail before any state changes: the newcomers'
        // MUKs, and the MSK ids the revocations will take, on disk.
        let mut newcomers = Vec::new();
        for (id, public) in &wanted {
            if !current.contains_key(id) {
                newcomers.push((
                    id.clone(),
                    public.clone(),
                    (self.muk)(public).map_err(bearer_err)?,
                ));
            }
        }
        if !gone.is_empty() {
            let ahead = u32::try_from(gone.len()).unwrap_or(u32::MAX);
            self.persist_above(sender.next_msk_id(), ahead)?;
        }
        let mut change = BearerChange::default();
        let mut deliveries = Vec::new();
        for d in gone {
            // A fresh MSK for everyone else, delivered only to them.
            let out = sender.revoke(&d, now(), &mut rng).map_err(bearer_err)?;
            current.remove(&d);
            deliveries.retain(|x: &MskDelivery| x.device != d);
            deliveries.extend(out);
            change.revoked.push(d);
        }
        for (id, public, muk) in newcomers {
            deliveries.extend(sender.entitle(muk, &mut rng).map_err(bearer_err)?);
            current.insert(id.clone(), public);
            change.entitled.push(id);
        }
        Ok((change, deliveries))
    }

    /// The service's id.
    pub(super) fn id(&self) -> &EntityId {
        &self.id
    }
}

/// A member's receiving state.
pub(super) struct Member {
    pub(super) service: EntityId,
    receiver: Mutex<BearerReceiver>,
    /// The target of its MSK deliveries.
    pub(super) delivery_target: String,
}

impl Member {
    pub(super) fn new(service: EntityId, muk: &OwnMuk, delivery_target: String) -> Result<Self> {
        let receiver = BearerReceiver::new(muk().map_err(bearer_err)?, ReceiverConfig::default())
            .map_err(bearer_err)?;
        Ok(Self {
            service,
            receiver: Mutex::new(receiver),
            delivery_target,
        })
    }

    /// Installs an MSK delivery.
    pub(super) fn install(&self, bytes: &[u8]) -> sealcast_bearer::Result<MskId> {
        self.receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handle_msk_delivery(bytes, now())
    }

    /// One frame heard on the bearer: the COSE object and its target, when
    /// it was a data frame this member can read.
    pub(super) fn open(&self, frame: &[u8]) -> sealcast_bearer::Result<Option<(String, Vec<u8>)>> {
        let mut receiver = self.receiver.lock().unwrap_or_else(PoisonError::into_inner);
        receiver.expire(now());
        Ok(receiver
            .handle(frame, now())?
            .map(|d| (d.topic.as_str().to_owned(), d.payload)))
    }
}

fn bearer_err(e: sealcast_bearer::Error) -> Error {
    Error::Runtime(format!("bearer: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_msk_state_round_trips_and_refuses_garbage() {
        let bytes = encode_msk_state(MskId::new(7)).unwrap();
        assert_eq!(decode_msk_state(&bytes).unwrap(), MskId::new(7));
        assert!(decode_msk_state(b"\x82\x02\x07").is_err());
        assert!(decode_msk_state(b"\x82\x01\x1b\x00\x00\x00\x01\x00\x00\x00\x00").is_err());
        assert!(decode_msk_state(&[0xff; 40]).is_err());
    }
}

//! Shared set-up for the bearer tests: one bearer service, N devices, a
//! seeded generator and a virtual clock.
#![allow(dead_code)]

use sealcast_bearer::{
    BearerReceiver, BearerSender, MskDelivery, MskId, Muk, ReceiverConfig, SenderConfig, Topic,
};
use sealcast_core::credential::EntityCredential;
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_core::testrng::TestRng;

pub const T0: u64 = 1_700_000_000_000;

pub fn at(ms: u64) -> UnixMillis {
    UnixMillis::new(T0 + ms)
}

pub struct Fleet {
    pub rng: TestRng,
    pub service: EntityCredential,
    pub devices: Vec<EntityCredential>,
    pub sender: BearerSender,
    pub receivers: Vec<BearerReceiver>,
}

impl Fleet {
    pub fn new(seed: u64, n: usize, sender_cfg: SenderConfig, rx_cfg: ReceiverConfig) -> Self {
        let mut rng = TestRng::new(seed);
        let service = EntityCredential::generate(EntityId::new("bearer-svc").unwrap(), &mut rng);
        let mut sender = BearerSender::new(
            service.id().clone(),
            MskId::new(1),
            sender_cfg,
            at(0),
            &mut rng,
        )
        .unwrap();
        let mut devices = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..n {
            let dev =
                EntityCredential::generate(EntityId::new(&format!("dev-{i}")).unwrap(), &mut rng);
            let deliveries = sender
                .entitle(Muk::for_service(&service, &dev.public()).unwrap(), &mut rng)
                .unwrap();
            let mut rx =
                BearerReceiver::new(Muk::for_device(&dev, &service.public()).unwrap(), rx_cfg)
                    .unwrap();
            for d in &deliveries {
                rx.handle_msk_delivery(&d.bytes, at(0)).unwrap();
            }
            devices.push(dev);
            receivers.push(rx);
        }
        Self {
            rng,
            service,
            devices,
            sender,
            receivers,
        }
    }

    /// Protects `payload` on `topic` at virtual time `now`.
    pub fn protect(&mut self, topic: &Topic, payload: &[u8], now: UnixMillis) -> Vec<Vec<u8>> {
        self.sender
            .protect(topic, payload, now, &mut self.rng)
            .unwrap()
    }

    /// Hands each delivery to the receiver of its device.
    pub fn deliver(&mut self, deliveries: &[MskDelivery], now: UnixMillis) {
        for d in deliveries {
            let i = self
                .devices
                .iter()
                .position(|c| c.id() == &d.device)
                .unwrap();
            self.receivers[i]
                .handle_msk_delivery(&d.bytes, now)
                .unwrap();
        }
    }

    pub fn id(&self, i: usize) -> EntityId {
        self.devices[i].id().clone()
    }
}

pub fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

/// The payload of the `i`-th object in a stream: distinct, of varying length.
pub fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("cose object #{i} ").into_bytes();
    p.resize(16 + (i * 37) % 200, (i % 251) as u8);
    p
}

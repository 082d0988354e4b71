//! The headend as its meters' manager for transmission control (TS-0003
//! "activate / deactivate"): the order in force for each meter
//! (`sealcast_group::transmission`, the headend signing as the manager)
//! and the version each meter acknowledged, saved in
//! `<state_dir>/meter-transmission.cbor` (0600) before an order is sent.
//!
//! An order travels as a per-meter item of the downlink bundle, signed
//! afresh (a new `issued_ms`) on every send until the meter acknowledges
//! its version in a report (`sealcast_metering::downlink::TransmissionAck`).

use std::collections::BTreeMap;

use ciborium::Value;
use sealcast_core::ids::{EntityId, UnixMillis};
use sealcast_group::transmission::{Scope, TransmissionOrder, TxKind, next_stopped, next_version};
use sealcast_store::DeviceStateFile;

use crate::{Error, Result};

/// File name of the headend's meter orders, beside its state file.
pub const METER_ORDERS_FILE: &str = "meter-transmission.cbor";
const VERSION: u64 = 1;
/// Largest orders file read.
const MAX_FILE_LEN: usize = 64 << 20;

/// The order in force for each meter and the version it acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterOrders {
    orders: BTreeMap<EntityId, (TransmissionOrder, Option<u64>)>,
}

fn bad(what: &str) -> Error {
    Error::Runtime(format!(
        "{METER_ORDERS_FILE}: {what} (not a file this version wrote; move it aside to start without orders)"
    ))
}

impl MeterOrders {
    /// The orders file beside the headend's state file.
    pub fn file_beside(state_file: &DeviceStateFile) -> DeviceStateFile {
        DeviceStateFile::new(state_file.path().with_file_name(METER_ORDERS_FILE))
    }

    /// Reads the saved orders (none saved: none in force).
    pub fn read(file: &DeviceStateFile) -> Result<Self> {
        match file.read()? {
            Some(bytes) => Self::decode(&bytes),
            None => Ok(Self::default()),
        }
    }

    /// Saves them.
    pub fn write(&self, file: &DeviceStateFile) -> Result<()> {
        Ok(file.write(&self.encode()?)?)
    }

    /// `[1, [[order bstr, acknowledged_version / null] …]]`, each order the
    /// CBOR of `TransmissionOrder`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut entries = Vec::with_capacity(self.orders.len());
        for (order, acked) in self.orders.values() {
            entries.push(Value::Array(vec![
                Value::Bytes(order.to_cbor()?),
                acked.map_or(Value::Null, Value::from),
            ]));
        }
        let mut out = Vec::new();
        ciborium::into_writer(
            &Value::Array(vec![Value::from(VERSION), Value::Array(entries)]),
            &mut out,
        )
        .map_err(|e| Error::Runtime(format!("meter orders not encoded: {e}")))?;
        Ok(out)
    }

    /// Reads what [`MeterOrders::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(bad("too large"));
        }
        let value: Value = ciborium::from_reader(bytes).map_err(|_| bad("not CBOR"))?;
        let Some([version, Value::Array(entries)]) = value.as_array().map(Vec::as_slice) else {
            return Err(bad("malformed"));
        };
        if sealcast_core::cbor::u64_of(version) != Some(VERSION) {
            return Err(bad("unknown version"));
        }
        let mut orders = BTreeMap::new();
        for e in entries {
            let Some([Value::Bytes(order), acked]) = e.as_array().map(Vec::as_slice) else {
                return Err(bad("malformed entry"));
            };
            let order = TransmissionOrder::from_cbor(order).map_err(|_| bad("malformed order"))?;
            let acked = match acked {
                Value::Null => None,
                v => Some(sealcast_core::cbor::u64_of(v).ok_or_else(|| bad("malformed entry"))?),
            };
            orders.insert(order.node.clone(), (order, acked));
        }
        Ok(Self { orders })
    }

    /// The orders after deactivating (or activating) `meter` for `scopes`
    /// (none: everything), on a copy: save it, then use it. Returns the
    /// new order.
    pub fn changed(
        &self,
        headend: &EntityId,
        meter: &EntityId,
        deactivate: bool,
        scopes: &[Scope],
        now: UnixMillis,
    ) -> (Self, TransmissionOrder) {
        let held = self.orders.get(meter).map(|(o, _)| o);
        let order = TransmissionOrder {
            manager: headend.clone(),
            node: meter.clone(),
            version: next_version(held.map(|o| o.version), now),
            issued: now,
            stopped: next_stopped(
                &held.map(|o| o.stopped.clone()).unwrap_or_default(),
                deactivate,
                scopes,
            ),
        };
        let mut next = self.clone();
        next.orders.insert(meter.clone(), (order.clone(), None));
        (next, order)
    }

    /// Whether the order in force stops `meter`'s readings.
    pub fn stops_reports(&self, meter: &EntityId) -> bool {
        self.orders.get(meter).is_some_and(|(o, _)| {
            !sealcast_group::transmission::allows(&o.stopped, TxKind::Report, None)
        })
    }

    /// Orders their meters have not acknowledged yet.
    pub fn pending(&self) -> impl Iterator<Item = &TransmissionOrder> {
        self.orders
            .values()
            .filter(|(o, acked)| *acked != Some(o.version))
            .map(|(o, _)| o)
    }

    /// The order of `meter` and the version it acknowledged.
    pub fn get(&self, meter: &EntityId) -> Option<(&TransmissionOrder, Option<u64>)> {
        self.orders.get(meter).map(|(o, a)| (o, *a))
    }

    /// Every meter's order.
    pub fn all(&self) -> impl Iterator<Item = (&TransmissionOrder, Option<u64>)> {
        self.orders.values().map(|(o, a)| (o, *a))
    }

    /// The orders after `meter` acknowledged `version` (None: nothing new,
    /// or not the version in force).
    pub fn acknowledged(&self, meter: &EntityId, version: u64) -> Option<Self> {
        let (order, acked) = self.orders.get(meter)?;
        if order.version != version || *acked == Some(version) {
            return None;
        }
        let mut next = self.clone();
        if let Some(e) = next.orders.get_mut(meter) {
            e.1 = Some(version);
        }
        Some(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn orders_grow_in_version_and_wait_for_their_acknowledgement() {
        let (h, m) = (
            EntityId::new("headend").unwrap(),
            EntityId::new("meter-1").unwrap(),
        );
        let none = MeterOrders::default();
        assert!(!none.stops_reports(&m));
        let (off, o1) = none.changed(&h, &m, true, &[], UnixMillis::new(5));
        assert!(off.stops_reports(&m));
        assert_eq!(off.pending().count(), 1);
        assert!(off.acknowledged(&m, o1.version + 1).is_none());
        let acked = off.acknowledged(&m, o1.version).unwrap();
        assert_eq!(acked.pending().count(), 0);
        assert!(acked.acknowledged(&m, o1.version).is_none());
        let (on, o2) = acked.changed(&h, &m, false, &[], UnixMillis::new(1));
        assert!(o2.version > o1.version);
        assert!(!on.stops_reports(&m));
        assert_eq!(on.pending().count(), 1);
        assert_eq!(MeterOrders::decode(&on.encode().unwrap()).unwrap(), on);
        let (only, _) = none.changed(
            &h,
            &m,
            true,
            &[Scope::Kind(TxKind::Report)],
            UnixMillis::new(9),
        );
        assert!(only.stops_reports(&m));
        assert!(MeterOrders::decode(b"\x82\x02\x80").is_err());
        assert!(MeterOrders::decode(b"junk").is_err());
    }
}

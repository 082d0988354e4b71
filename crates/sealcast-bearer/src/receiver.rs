//! The device's side: MSK installation and frame opening.

use core::fmt;
use std::collections::BTreeMap;

use sealcast_core::crypto::AeadKey;
use sealcast_core::ids::{EntityId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqWindow;

use crate::error::{Error, Result};
use crate::frame::{self, DataFrame, KeyFrame, ParsedFrame};
use crate::ids::{FrameCounter, MskId, MtkId, Topic};
use crate::keys::{ALG, Muk};

/// How much a [`BearerReceiver`] remembers and tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Replay window per MTK in frames: a multiple of 64 in 64 ..= 4096.
    /// Frames reordered further than this are refused as too old.
    /// Default 256.
    pub replay_window: usize,
    /// How far the receiver's clock may lag behind the sender's (ms) when
    /// judging MSK and MTK expiry. Default 30 s.
    pub clock_skew_ms: u64,
    /// MTKs kept per MSK (1 ..= 16): the newest ones; the oldest is retired
    /// when a key frame brings one more. 2 keeps the previous MTK for frames
    /// reordered across a rollover. Default 2.
    pub mtks_per_msk: usize,
    /// MSKs kept (1 ..= 16). Default 3.
    pub max_msks: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            replay_window: 256,
            clock_skew_ms: 30_000,
            mtks_per_msk: 2,
            max_msks: 3,
        }
    }
}

impl ReceiverConfig {
    fn validate(&self) -> Result<()> {
        SeqWindow::with_size(self.replay_window).map_err(|_| {
            Error::InvalidConfig("replay_window must be a multiple of 64 in 64..=4096")
        })?;
        if !(1..=16).contains(&self.mtks_per_msk) {
            return Err(Error::InvalidConfig("mtks_per_msk must be in 1..=16"));
        }
        if !(1..=16).contains(&self.max_msks) {
            return Err(Error::InvalidConfig("max_msks must be in 1..=16"));
        }
        Ok(())
    }
}

/// One COSE object received on the bearer, with its routing target.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The topic the sender protected it for: hand `payload` to the
    /// end-to-end layer as received on this topic.
    pub topic: Topic,
    /// The COSE bytes, unchanged.
    pub payload: Vec<u8>,
    /// The MSK of the frame.
    pub msk_id: MskId,
    /// The MTK of the frame.
    pub mtk_id: MtkId,
    /// The frame counter.
    pub counter: FrameCounter,
}

#[derive(Clone)]
struct RxMtk {
    key: AeadKey,
    not_after: UnixMillis,
    window: SeqWindow,
}

#[derive(Clone)]
struct RxMsk {
    key: AeadKey,
    not_after: UnixMillis,
    mtks: BTreeMap<MtkId, RxMtk>,
    /// The highest MTK id retired under this MSK: never installed again.
    mtk_floor: Option<MtkId>,
}

/// The receiving side of one bearer service on one device.
///
/// Feed it the MSK deliveries addressed to the device
/// ([`BearerReceiver::handle_msk_delivery`]) and every frame heard on the
/// bearer ([`BearerReceiver::handle`]). It never panics on hostile input and
/// changes no state when it refuses something.
///
/// # What it keeps
///
/// At most [`ReceiverConfig::max_msks`] MSKs, each with at most
/// [`ReceiverConfig::mtks_per_msk`] MTKs and one replay window per MTK.
/// Retired ids are remembered as floors (one per MSK and one for MSKs): a
/// key frame or delivery at or below a floor is refused as stale, so an old
/// key frame replayed cannot bring back an MTK together with a fresh replay
/// window.
///
/// An authenticated key frame under MSK *n* proves the sender moved to *n*:
/// it retires every older MSK. After a revocation this closes the door on
/// the revoked device, which still knows the old MSK and could otherwise
/// forge frames under it.
pub struct BearerReceiver {
    muk: Muk,
    config: ReceiverConfig,
    msks: BTreeMap<MskId, RxMsk>,
    msk_floor: Option<MskId>,
}

impl fmt::Debug for BearerReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(MskId, Vec<MtkId>)> = self
            .msks
            .iter()
            .map(|(id, m)| (*id, m.mtks.keys().copied().collect()))
            .collect();
        f.debug_struct("BearerReceiver")
            .field("service", self.muk.service())
            .field("device", self.muk.device())
            .field("config", &self.config)
            .field("keys", &keys)
            .field("msk_floor", &self.msk_floor)
            .finish_non_exhaustive()
    }
}

fn is_stale<T: Ord>(id: T, floor: Option<T>) -> bool {
    floor.is_some_and(|f| id <= f)
}

fn expired(not_after: UnixMillis, skew_ms: u64, now: UnixMillis) -> bool {
    now.get() > not_after.get().saturating_add(skew_ms)
}

impl BearerReceiver {
    /// A receiver for the service and device of `muk` (from
    /// [`Muk::for_device`]), holding no MSK yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`].
    pub fn new(muk: Muk, config: ReceiverConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            muk,
            config,
            msks: BTreeMap::new(),
            msk_floor: None,
        })
    }

    /// The bearer service.
    pub fn service(&self) -> &EntityId {
        self.muk.service()
    }

    /// This device.
    pub fn device(&self) -> &EntityId {
        self.muk.device()
    }

    /// The MSKs installed, oldest first.
    pub fn msk_ids(&self) -> impl Iterator<Item = MskId> + '_ {
        self.msks.keys().copied()
    }

    /// The MTKs installed under `msk`, oldest first.
    pub fn mtk_ids(&self, msk: MskId) -> impl Iterator<Item = MtkId> + '_ {
        self.msks
            .get(&msk)
            .into_iter()
            .flat_map(|m| m.mtks.keys().copied())
    }

    /// Installs the MSK of a delivery addressed to this device and returns
    /// its id. A delivery of an MSK already installed changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`], [`Error::StaleMsk`] (at or below a retired id,
    /// or older than every kept MSK when the store is full),
    /// [`Error::DecryptFailed`] (not for this device or service, or
    /// tampered), [`Error::MskExpired`]. Nothing changes on error.
    pub fn handle_msk_delivery(&mut self, bytes: &[u8], now: UnixMillis) -> Result<MskId> {
        let d = frame::parse_delivery(bytes)?;
        if is_stale(d.msk_id, self.msk_floor) {
            return Err(Error::StaleMsk(d.msk_id));
        }
        let aad = frame::aad(self.muk.service(), Some(self.muk.device()), d.header);
        let plain = self.muk.aead().open(d.nonce, &aad, d.sealed)?;
        let (key, not_after) = frame::parse_key_plaintext(&plain)?;
        if expired(not_after, self.config.clock_skew_ms, now) {
            return Err(Error::MskExpired(d.msk_id));
        }
        if self.msks.contains_key(&d.msk_id) {
            return Ok(d.msk_id);
        }
        if self.msks.len() >= self.config.max_msks
            && self
                .msks
                .keys()
                .next()
                .is_some_and(|&oldest| d.msk_id < oldest)
        {
            return Err(Error::StaleMsk(d.msk_id));
        }
        let key = AeadKey::new(ALG, key)?;
        self.msks.insert(
            d.msk_id,
            RxMsk {
                key,
                not_after,
                mtks: BTreeMap::new(),
                mtk_floor: None,
            },
        );
        while self.msks.len() > self.config.max_msks {
            self.retire_oldest_msk();
        }
        Ok(d.msk_id)
    }

    fn retire_oldest_msk(&mut self) {
        if let Some((id, _)) = self.msks.pop_first() {
            self.msk_floor = self.msk_floor.max(Some(id));
        }
    }

    /// Retires every MSK older than `msk`: the sender has moved on.
    fn retire_msks_before(&mut self, msk: MskId) {
        while self.msks.keys().next().is_some_and(|&oldest| oldest < msk) {
            self.retire_oldest_msk();
        }
    }

    /// Drops every MSK and MTK whose lifetime (plus the clock skew) is over
    /// at `now`, raising the floors so they never come back. Frames under
    /// them are refused with [`Error::MskExpired`] / [`Error::MtkExpired`]
    /// before this runs and as stale afterwards; an I/O shell calls it now
    /// and then to free memory early.
    pub fn expire(&mut self, now: UnixMillis) {
        let skew = self.config.clock_skew_ms;
        let gone: Vec<MskId> = self
            .msks
            .iter()
            .filter(|(_, m)| expired(m.not_after, skew, now))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.msks.remove(&id);
            self.msk_floor = self.msk_floor.max(Some(id));
        }
        for msk in self.msks.values_mut() {
            let gone: Vec<MtkId> = msk
                .mtks
                .iter()
                .filter(|(_, m)| expired(m.not_after, skew, now))
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                msk.mtks.remove(&id);
                msk.mtk_floor = msk.mtk_floor.max(Some(id));
            }
        }
    }

    fn msk_mut(&mut self, id: MskId, now: UnixMillis) -> Result<&mut RxMsk> {
        let skew = self.config.clock_skew_ms;
        match self.msks.get_mut(&id) {
            Some(m) if expired(m.not_after, skew, now) => Err(Error::MskExpired(id)),
            Some(m) => Ok(m),
            None if is_stale(id, self.msk_floor) => Err(Error::StaleMsk(id)),
            None => Err(Error::UnknownMsk(id)),
        }
    }

    /// Handles one frame heard on the bearer. A key frame installs its MTK
    /// and returns `Ok(None)` (so does a repetition of one already
    /// installed); a data frame returns the COSE object it carries.
    ///
    /// Order for a data frame: bounded parse → MSK and MTK known and not
    /// expired → replay pre-check → AES-GCM open → strict plaintext parse →
    /// commit the replay window → deliver.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`], [`Error::Malformed`], [`Error::UnknownMsk`],
    /// [`Error::StaleMsk`], [`Error::MskExpired`], [`Error::UnknownMtk`],
    /// [`Error::StaleMtk`], [`Error::MtkExpired`], [`Error::Replay`],
    /// [`Error::DecryptFailed`]. Nothing changes on error.
    pub fn handle(&mut self, frame: &[u8], now: UnixMillis) -> Result<Option<Delivered>> {
        match frame::parse_frame(frame)? {
            ParsedFrame::Key(k) => {
                self.handle_key_frame(&k, now)?;
                Ok(None)
            }
            ParsedFrame::Data(d) => self.handle_data_frame(&d, now).map(Some),
        }
    }

    fn handle_key_frame(&mut self, k: &KeyFrame<'_>, now: UnixMillis) -> Result<()> {
        let aad = frame::aad(self.muk.service(), None, k.header);
        let config = self.config;
        let msk = self.msk_mut(k.msk_id, now)?;
        if is_stale(k.mtk_id, msk.mtk_floor) {
            return Err(Error::StaleMtk(k.mtk_id));
        }
        if msk.mtks.contains_key(&k.mtk_id) {
            // A repetition: the MTK is installed and its window must stay.
            return Ok(());
        }
        let plain = msk.key.open(k.nonce, &aad, k.sealed)?;
        let (key, not_after) = frame::parse_key_plaintext(&plain)?;
        if expired(not_after, config.clock_skew_ms, now) {
            return Err(Error::MtkExpired(k.mtk_id));
        }
        if msk.mtks.len() >= config.mtks_per_msk
            && msk
                .mtks
                .keys()
                .next()
                .is_some_and(|&oldest| k.mtk_id < oldest)
        {
            // It would be retired at once: older than every MTK kept.
            return Err(Error::StaleMtk(k.mtk_id));
        }
        let window = SeqWindow::with_size(config.replay_window)?;
        let key = AeadKey::new(ALG, key)?;
        msk.mtks.insert(
            k.mtk_id,
            RxMtk {
                key,
                not_after,
                window,
            },
        );
        while msk.mtks.len() > config.mtks_per_msk {
            if let Some((id, _)) = msk.mtks.pop_first() {
                msk.mtk_floor = msk.mtk_floor.max(Some(id));
            }
        }
        self.retire_msks_before(k.msk_id);
        Ok(())
    }

    fn handle_data_frame(&mut self, d: &DataFrame<'_>, now: UnixMillis) -> Result<Delivered> {
        let aad = frame::aad(self.muk.service(), None, d.header);
        let skew = self.config.clock_skew_ms;
        let msk = self.msk_mut(d.msk_id, now)?;
        let mtk = match msk.mtks.get_mut(&d.mtk_id) {
            Some(m) => m,
            None if is_stale(d.mtk_id, msk.mtk_floor) => return Err(Error::StaleMtk(d.mtk_id)),
            None => return Err(Error::UnknownMtk(d.mtk_id)),
        };
        if expired(mtk.not_after, skew, now) {
            return Err(Error::MtkExpired(d.mtk_id));
        }
        let token = mtk.window.check(SeqNum::new(u64::from(d.counter.get()))?)?;
        let plain = mtk
            .key
            .open(&frame::data_nonce(d.mtk_id, d.counter), &aad, d.sealed)?;
        let (topic, payload) = frame::decode_data_plaintext(&plain)?;
        mtk.window.commit(token)?;
        self.retire_msks_before(d.msk_id);
        Ok(Delivered {
            topic,
            payload,
            msk_id: d.msk_id,
            mtk_id: d.mtk_id,
            counter: d.counter,
        })
    }

    /// A second receiver in the same state, for the fuzz fixture only.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            muk: self.muk.duplicate(),
            config: self.config,
            msks: self.msks.clone(),
            msk_floor: self.msk_floor,
        }
    }
}

//! The bearer service's side (the BM-SC role of TS 33.246): entitlement,
//! MSK delivery, revocation, MTK rollover and frame protection.

use core::fmt;
use std::collections::BTreeMap;

use rand_core::CryptoRng;
use sealcast_core::crypto::AeadKey;
use sealcast_core::ids::{EntityId, UnixMillis};

use crate::error::{Error, Result};
use crate::frame;
use crate::ids::{FrameCounter, MskId, MtkId, Topic};
use crate::keys::{FreshKey, Muk};

/// When a [`BearerSender`] rolls keys over and repeats key frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// A new MTK starts after this many data frames under one MTK
    /// (1 ..= 2^32 − 1). Default 4096.
    pub mtk_max_frames: u32,
    /// A new MTK starts when the current one is this old (ms). Default 60 s.
    pub mtk_lifetime_ms: u64,
    /// The key frame of the current MTK is sent before every data frame whose
    /// counter is a multiple of this number (so before counter 0, K, 2K …).
    /// A receiver that lost a key frame recovers at the next repetition,
    /// after at most K data frames. Default 16.
    pub key_frame_interval: u32,
    /// Lifetime of a new MSK (ms); receivers refuse it afterwards. Default
    /// 24 h.
    pub msk_lifetime_ms: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            mtk_max_frames: 4096,
            mtk_lifetime_ms: 60_000,
            key_frame_interval: 16,
            msk_lifetime_ms: 24 * 3600 * 1000,
        }
    }
}

impl SenderConfig {
    fn validate(&self) -> Result<()> {
        if self.mtk_max_frames == 0 {
            return Err(Error::InvalidConfig("mtk_max_frames must be at least 1"));
        }
        if self.key_frame_interval == 0 {
            return Err(Error::InvalidConfig(
                "key_frame_interval must be at least 1",
            ));
        }
        if self.mtk_lifetime_ms == 0 || self.msk_lifetime_ms == 0 {
            return Err(Error::InvalidConfig("lifetimes must be at least 1 ms"));
        }
        Ok(())
    }
}

/// An MSK delivery for one device: send `bytes` to `device` point to point
/// (its per-device MQTT topic, CoAP unicast); it hands them to
/// [`crate::BearerReceiver::handle_msk_delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MskDelivery {
    /// The device it is for.
    pub device: EntityId,
    /// The MSK it carries.
    pub msk_id: MskId,
    /// The protected delivery (see [`crate::frame`]).
    pub bytes: Vec<u8>,
}

struct SenderMsk {
    id: MskId,
    key: FreshKey,
    not_after: UnixMillis,
}

struct SenderMtk {
    id: MtkId,
    msk_id: MskId,
    key: AeadKey,
    /// When the sender rolls it over (start + lifetime).
    roll_at: UnixMillis,
    next_counter: u32,
    /// The key frame, built once and repeated as is.
    key_frame: Vec<u8>,
}

/// The sending side of one bearer service.
///
/// It holds the MUKs of the entitled devices, the active MSK (and possibly
/// a prepared next one), the current MTK and its frame counter.
///
/// # State and restarts
///
/// Everything lives in memory. A restarted sender must not reuse MSK ids
/// (receivers refuse ids at or below ones they retired): persist
/// [`BearerSender::next_msk_id`] and pass it to [`BearerSender::new`] after a
/// restart, which then starts a fresh MSK and delivers it again. MTK keys
/// are random and key frames take random nonces, so nothing else needs to
/// survive a restart.
///
/// # Revocation
///
/// [`BearerSender::revoke`] drops a device's MUK, discards any prepared MSK
/// (the revoked device may hold it) and switches to a fresh MSK at once,
/// delivered only to the devices still entitled. The next frame starts a new
/// MTK under it, so the revoked device cannot read anything sent afterwards.
///
/// # Joining
///
/// [`BearerSender::entitle`] delivers the *current* MSK, so a new device can
/// read bearer frames sent under it before it joined (if it recorded them).
/// Call [`BearerSender::rotate_msk`] after entitling when that matters; the
/// end-to-end COSE layer inside has its own join rules either way.
pub struct BearerSender {
    service: EntityId,
    config: SenderConfig,
    devices: BTreeMap<EntityId, Muk>,
    active: SenderMsk,
    prepared: Option<SenderMsk>,
    next_msk_id: Option<MskId>,
    mtk: Option<SenderMtk>,
    next_mtk_id: Option<MtkId>,
}

impl fmt::Debug for BearerSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerSender")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("active_msk", &self.active.id)
            .field("prepared_msk", &self.prepared.as_ref().map(|m| m.id))
            .field("mtk", &self.mtk.as_ref().map(|m| (m.id, m.next_counter)))
            .finish_non_exhaustive()
    }
}

impl BearerSender {
    /// A sender for bearer service `service` whose first MSK takes id
    /// `first_msk_id` (persisted across restarts, see the type's docs) and
    /// lives from `now` for [`SenderConfig::msk_lifetime_ms`]. No device is
    /// entitled yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`].
    pub fn new<R: CryptoRng + ?Sized>(
        service: EntityId,
        first_msk_id: MskId,
        config: SenderConfig,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Self> {
        config.validate()?;
        let active = Self::fresh_msk(first_msk_id, &config, now, rng)?;
        Ok(Self {
            service,
            config,
            devices: BTreeMap::new(),
            active,
            prepared: None,
            next_msk_id: first_msk_id.next(),
            mtk: None,
            next_mtk_id: Some(MtkId::new(1)),
        })
    }

    fn fresh_msk<R: CryptoRng + ?Sized>(
        id: MskId,
        config: &SenderConfig,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<SenderMsk> {
        Ok(SenderMsk {
            id,
            key: FreshKey::generate(rng)?,
            not_after: UnixMillis::new(now.get().saturating_add(config.msk_lifetime_ms)),
        })
    }

    /// Allocates the next MSK id and draws the key; commits the id only
    /// when the caller keeps the MSK.
    fn allocate_msk<R: CryptoRng + ?Sized>(
        &self,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<(SenderMsk, Option<MskId>)> {
        let id = self.next_msk_id.ok_or(Error::IdsExhausted("MSK"))?;
        Ok((Self::fresh_msk(id, &self.config, now, rng)?, id.next()))
    }

    fn deliver<R: CryptoRng + ?Sized>(
        &self,
        muk: &Muk,
        msk: &SenderMsk,
        rng: &mut R,
    ) -> Result<MskDelivery> {
        let plain = frame::key_plaintext(&msk.key.raw, msk.not_after);
        let bytes =
            frame::seal_delivery(&self.service, muk.device(), msk.id, muk.aead(), &plain, rng)?;
        Ok(MskDelivery {
            device: muk.device().clone(),
            msk_id: msk.id,
            bytes,
        })
    }

    fn deliver_to_all<R: CryptoRng + ?Sized>(
        &self,
        msk: &SenderMsk,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        self.devices
            .values()
            .map(|muk| self.deliver(muk, msk, rng))
            .collect()
    }

    /// The bearer service's id.
    pub fn service(&self) -> &EntityId {
        &self.service
    }

    /// The id of the MSK frames are protected under now.
    pub fn active_msk_id(&self) -> MskId {
        self.active.id
    }

    /// When the active MSK expires; rotate before then.
    pub fn active_msk_not_after(&self) -> UnixMillis {
        self.active.not_after
    }

    /// The id of the prepared (delivered, not yet active) MSK, if any.
    pub fn prepared_msk_id(&self) -> Option<MskId> {
        self.prepared.as_ref().map(|m| m.id)
    }

    /// The MSK id the next new MSK will take; persist it (see the type's
    /// docs). `None` once the id space is used up.
    pub fn next_msk_id(&self) -> Option<MskId> {
        self.next_msk_id
    }

    /// The current MTK's id, if one has started.
    pub fn current_mtk_id(&self) -> Option<MtkId> {
        self.mtk.as_ref().map(|m| m.id)
    }

    /// The current MTK's key frame, for an I/O shell that repeats it on a
    /// timer while the bearer is idle (receivers treat repetitions as
    /// no-ops). `None` before the first frame and after an MSK change.
    pub fn current_key_frame(&self) -> Option<&[u8]> {
        self.mtk
            .as_ref()
            .filter(|m| m.msk_id == self.active.id)
            .map(|m| m.key_frame.as_slice())
    }

    /// Whether `device` is entitled.
    pub fn is_entitled(&self, device: &EntityId) -> bool {
        self.devices.contains_key(device)
    }

    /// The entitled devices.
    pub fn entitled(&self) -> impl Iterator<Item = &EntityId> {
        self.devices.keys()
    }

    /// Entitles the device whose MUK (from [`Muk::for_service`]) is `muk`
    /// and returns its deliveries: the active MSK and, if one is prepared,
    /// the prepared MSK.
    ///
    /// # Errors
    ///
    /// [`Error::WrongService`] for a MUK of another service,
    /// [`Error::AlreadyEntitled`].
    pub fn entitle<R: CryptoRng + ?Sized>(
        &mut self,
        muk: Muk,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        if muk.service() != &self.service {
            return Err(Error::WrongService);
        }
        if self.devices.contains_key(muk.device()) {
            return Err(Error::AlreadyEntitled);
        }
        let mut out = vec![self.deliver(&muk, &self.active, rng)?];
        if let Some(prepared) = &self.prepared {
            out.push(self.deliver(&muk, prepared, rng)?);
        }
        self.devices.insert(muk.device().clone(), muk);
        Ok(out)
    }

    /// Delivers the active MSK (and a prepared one) to `device` again, e.g.
    /// after it reports that it lost its state.
    ///
    /// # Errors
    ///
    /// [`Error::NotEntitled`].
    pub fn redeliver<R: CryptoRng + ?Sized>(
        &self,
        device: &EntityId,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        let muk = self.devices.get(device).ok_or(Error::NotEntitled)?;
        let mut out = vec![self.deliver(muk, &self.active, rng)?];
        if let Some(prepared) = &self.prepared {
            out.push(self.deliver(muk, prepared, rng)?);
        }
        Ok(out)
    }

    /// Revokes `device`: forgets its MUK, discards any prepared MSK and
    /// switches to a fresh MSK at once. Returns the new MSK's deliveries for
    /// the devices still entitled; the revoked device gets none and cannot
    /// decrypt frames protected after this call.
    ///
    /// # Errors
    ///
    /// [`Error::NotEntitled`], [`Error::IdsExhausted`]. Nothing changes on
    /// error.
    pub fn revoke<R: CryptoRng + ?Sized>(
        &mut self,
        device: &EntityId,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        if !self.devices.contains_key(device) {
            return Err(Error::NotEntitled);
        }
        let (msk, next) = self.allocate_msk(now, rng)?;
        let deliveries: Vec<MskDelivery> = self
            .devices
            .values()
            .filter(|muk| muk.device() != device)
            .map(|muk| self.deliver(muk, &msk, rng))
            .collect::<Result<_>>()?;
        self.devices.remove(device);
        self.activate(msk, next);
        Ok(deliveries)
    }

    /// Switches to a fresh MSK at once (discarding a prepared one) and
    /// returns its deliveries for every entitled device. Frames sent before
    /// a device's delivery arrives are lost to it; [`BearerSender::prepare_msk`]
    /// avoids that for scheduled renewals.
    ///
    /// # Errors
    ///
    /// [`Error::IdsExhausted`]. Nothing changes on error.
    pub fn rotate_msk<R: CryptoRng + ?Sized>(
        &mut self,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        let (msk, next) = self.allocate_msk(now, rng)?;
        let deliveries = self.deliver_to_all(&msk, rng)?;
        self.activate(msk, next);
        Ok(deliveries)
    }

    /// Draws the next MSK without using it yet and returns its deliveries
    /// (replacing any earlier prepared MSK). Send them, then call
    /// [`BearerSender::activate_prepared_msk`] once devices had time to
    /// install it.
    ///
    /// # Errors
    ///
    /// [`Error::IdsExhausted`]. Nothing changes on error.
    pub fn prepare_msk<R: CryptoRng + ?Sized>(
        &mut self,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<MskDelivery>> {
        let (msk, next) = self.allocate_msk(now, rng)?;
        let deliveries = self.deliver_to_all(&msk, rng)?;
        self.prepared = Some(msk);
        self.next_msk_id = next;
        Ok(deliveries)
    }

    /// Makes the prepared MSK the active one; the next frame starts a new
    /// MTK under it. Returns its id, or `None` if none was prepared.
    pub fn activate_prepared_msk(&mut self) -> Option<MskId> {
        let msk = self.prepared.take()?;
        let id = msk.id;
        self.active = msk;
        self.mtk = None;
        Some(id)
    }

    fn activate(&mut self, msk: SenderMsk, next: Option<MskId>) {
        self.active = msk;
        self.prepared = None;
        self.next_msk_id = next;
        self.mtk = None;
    }

    fn needs_new_mtk(&self, now: UnixMillis) -> bool {
        match &self.mtk {
            None => true,
            Some(m) => {
                m.msk_id != self.active.id
                    || m.next_counter >= self.config.mtk_max_frames
                    || now >= m.roll_at
            }
        }
    }

    fn start_mtk<R: CryptoRng + ?Sized>(&mut self, now: UnixMillis, rng: &mut R) -> Result<()> {
        let id = self.next_mtk_id.ok_or(Error::IdsExhausted("MTK"))?;
        let key = FreshKey::generate(rng)?;
        let roll_at = UnixMillis::new(now.get().saturating_add(self.config.mtk_lifetime_ms));
        // An MTK never outlives its MSK.
        let not_after = roll_at.min(self.active.not_after);
        let plain = frame::key_plaintext(&key.raw, not_after);
        let key_frame = frame::seal_key_frame(
            &self.service,
            self.active.id,
            id,
            &self.active.key.aead,
            &plain,
            rng,
        )?;
        self.mtk = Some(SenderMtk {
            id,
            msk_id: self.active.id,
            key: key.aead,
            roll_at,
            next_counter: 0,
            key_frame,
        });
        self.next_mtk_id = id.next();
        Ok(())
    }

    /// Protects one COSE object for `topic` and returns the frames to send
    /// on the bearer, in order: the current MTK's key frame when a new MTK
    /// starts or a repetition is due, then the data frame.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] when topic and payload exceed the largest padding
    /// bucket, [`Error::MskExpired`] when the active MSK's lifetime is over
    /// (rotate it), [`Error::IdsExhausted`].
    pub fn protect<R: CryptoRng + ?Sized>(
        &mut self,
        topic: &Topic,
        cose: &[u8],
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Vec<Vec<u8>>> {
        let padded = frame::encode_data_plaintext(topic, cose)?;
        if now > self.active.not_after {
            return Err(Error::MskExpired(self.active.id));
        }
        if self.needs_new_mtk(now) {
            self.start_mtk(now, rng)?;
        }
        let msk_id = self.active.id;
        let interval = self.config.key_frame_interval;
        let mtk = self
            .mtk
            .as_mut()
            .ok_or(Error::Malformed("no current MTK"))?;
        let counter = FrameCounter::new(mtk.next_counter);
        let data =
            frame::seal_data_frame(&self.service, msk_id, mtk.id, counter, &mtk.key, &padded)?;
        let mut out = Vec::with_capacity(2);
        if counter.get().is_multiple_of(interval) {
            out.push(mtk.key_frame.clone());
        }
        out.push(data);
        // mtk_max_frames ≤ u32::MAX keeps the counter below u32::MAX here.
        mtk.next_counter = mtk.next_counter.saturating_add(1);
        Ok(out)
    }

    /// The raw keys, for the fuzz fixture only.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn fuzz_keys(&self) -> Option<(MskId, &AeadKey, MtkId, &AeadKey)> {
        let mtk = self.mtk.as_ref()?;
        Some((self.active.id, &self.active.key.aead, mtk.id, &mtk.key))
    }
}

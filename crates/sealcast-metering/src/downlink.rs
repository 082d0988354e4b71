//! The smart-meter downlink, sans-IO: the headend re-configures all its
//! meters at once (TS-0001 §5.2.1) through DAPs that can neither read nor
//! forge what they relay.
//!
//! - **The meter group.** The headend holds the key of one group of its
//!   meters ([`HeadendDownlink`]; it is the group's only authorised signer)
//!   and hands each meter the key in a key delivery
//!   (`sealcast_core::delivery`: sealed to the meter's X25519 key, signed
//!   by the headend). Evicting a meter (revocation) moves the group to a
//!   fresh random key (a new epoch) delivered to every other meter.
//! - **The command.** A [`ConfigCommand`] (a version and named settings) is
//!   a group broadcast (`sealcast_core::broadcast`: signed by the headend,
//!   then encrypted under the group key), with a sequence number the
//!   headend saved before it used it.
//! - **The relay.** The headend sends each DAP a [`Bundle`] it signs (the
//!   key deliveries for that DAP's meters and the command); the DAP checks
//!   the headend's signature, then passes the inner bytes on unchanged: the
//!   command to the meter group's target, each delivery to its meter.
//! - **The confirmation.** A meter that installed a key or applied (or
//!   already holds) a configuration reports a [`MeterAck`] as the plaintext
//!   of an ordinary report, so the DAP cannot tell it from a reading and it
//!   has the reports' end-to-end protection and replay window.
//!
//! ```text
//! bundle  (LABEL_DOWNLINK) = [ headend: tstr, dap: tstr, issued_ms: uint,
//!                              [ [ meter: tstr, delivery: bstr ], … ],   ; ≤ MAX_BUNDLE_DELIVERIES
//!                              command: bstr / null ]
//! command plaintext        = [ "sealcast meter config v1", version: uint, { name: tstr => value: tstr } ]
//! ack plaintext            = [ "sealcast meter ack v1", epoch: uint, version: uint ]
//! ```
//!
//! A meter applies a configuration only when its version is newer than the
//! one it holds, so an old command replayed (or re-sealed) changes nothing;
//! the broadcast's sequence window refuses the same bytes twice.

use std::collections::BTreeMap;

use ciborium::Value;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use sealcast_core::broadcast::{BroadcastReceiver, BroadcastSender, ReplayPolicy};
use sealcast_core::credential::EntityCredential;
use sealcast_core::crypto::AeadAlg;
use sealcast_core::delivery::{open_key_delivery, seal_key_delivery};
use sealcast_core::groupkey::{AuthorizedSigner, GroupContext, GroupKeyMaterial};
use sealcast_core::ids::{EntityId, Epoch, GroupId, SenderId, SeqNum, UnixMillis};
use sealcast_core::replay::SeqWindow;
use sealcast_core::statement::{UnverifiedStatement, sign_statement};
use x25519_dalek::PublicKey as X25519Public;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Label of the headend's signed downlink bundle to a DAP.
pub const LABEL_DOWNLINK: &str = "sealcast meter downlink v1";
/// First element of a configuration command's plaintext.
pub const CONFIG_LABEL: &str = "sealcast meter config v1";
/// First element of a meter's confirmation (a report's plaintext).
pub const ACK_LABEL: &str = "sealcast meter ack v1";
/// Largest signed bundle.
pub const MAX_BUNDLE_LEN: usize = 1 << 20;
/// Most key deliveries in one bundle (the headend splits larger sets).
pub const MAX_BUNDLE_DELIVERIES: usize = 1024;
/// Most settings in one configuration.
pub const MAX_SETTINGS: usize = 64;
/// Longest setting name (bytes; letters, digits, `_`, `-`, `.`).
pub const MAX_SETTING_NAME_LEN: usize = 64;
/// Longest setting value (bytes).
pub const MAX_SETTING_VALUE_LEN: usize = 256;
/// A DAP refuses a bundle issued further than this from its clock.
pub const BUNDLE_MAX_AGE_MS: u64 = 10 * 60 * 1000;
/// The headend's sender id in the meter group (its only signer).
pub const HEADEND_SENDER_ID: [u8; 1] = [0x01];
/// The AEAD of the meter group.
pub const GROUP_ALG: AeadAlg = AeadAlg::A128Gcm;
/// Largest state file either side writes.
const MAX_STATE_LEN: usize = 1 << 24;
const STATE_VERSION: u64 = 1;

use crate::wire::{encode, id_value, malformed, text_id, uint};

/// [`crate::wire`]'s exact decoder behind a size limit of its own.
fn decode_exact(bytes: &[u8], limit: usize) -> Result<Value> {
    if bytes.len() > limit {
        return Err(malformed("downlink item too large"));
    }
    crate::wire::decode_exact(bytes)
}

/// Checks one setting's name and value.
pub fn check_setting(name: &str, value: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_SETTING_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(Error::Refused(
            "setting name must be 1-64 letters, digits, '_', '-' or '.'",
        ));
    }
    if value.len() > MAX_SETTING_VALUE_LEN || value.chars().any(char::is_control) {
        return Err(Error::Refused(
            "setting value must be at most 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// A configuration for every meter of the group: newer versions replace
/// older ones whole.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigCommand {
    /// Grows with every configuration the headend issues (from 1).
    pub version: u64,
    /// The settings, by name.
    pub settings: BTreeMap<String, String>,
}

impl core::fmt::Debug for ConfigCommand {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Values are command content: names only.
        f.debug_struct("ConfigCommand")
            .field("version", &self.version)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConfigCommand {
    /// Checks the bounds and the names.
    pub fn check(&self) -> Result<()> {
        if self.version == 0 {
            return Err(Error::Refused("configuration versions start at 1"));
        }
        if self.settings.len() > MAX_SETTINGS {
            return Err(Error::Refused("more than 64 settings"));
        }
        for (k, v) in &self.settings {
            check_setting(k, v)?;
        }
        Ok(())
    }

    /// The command's plaintext.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>> {
        self.check()?;
        Ok(Zeroizing::new(encode(&self.to_value())?))
    }

    fn to_value(&self) -> Value {
        Value::Array(vec![
            Value::Text(CONFIG_LABEL.to_owned()),
            Value::Integer(self.version.into()),
            Value::Map(
                self.settings
                    .iter()
                    .map(|(k, v)| (Value::Text(k.clone()), Value::Text(v.clone())))
                    .collect(),
            ),
        ])
    }

    fn from_value(value: &Value) -> Result<Self> {
        let Value::Array(items) = value else {
            return Err(malformed("configuration is not an array"));
        };
        let [Value::Text(label), version, Value::Map(settings)] = items.as_slice() else {
            return Err(malformed("configuration has the wrong shape"));
        };
        if label != CONFIG_LABEL {
            return Err(malformed("not a meter configuration"));
        }
        if settings.len() > MAX_SETTINGS {
            return Err(malformed("more than 64 settings"));
        }
        let mut map = BTreeMap::new();
        for (k, v) in settings {
            let (Value::Text(k), Value::Text(v)) = (k, v) else {
                return Err(malformed("setting is not text"));
            };
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(malformed("setting named twice"));
            }
        }
        let command = Self {
            version: uint(version)?,
            settings: map,
        };
        command.check()?;
        Ok(command)
    }

    /// Decodes a command's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Self::from_value(&decode_exact(bytes, 64 * 1024)?)
    }
}

/// A meter's confirmation: the group epoch whose key it holds and the
/// configuration version it applied (0: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterAck {
    /// Epoch of the group key it installed.
    pub epoch: u32,
    /// Configuration version it holds.
    pub version: u64,
}

impl MeterAck {
    /// The report plaintext carrying it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Text(ACK_LABEL.to_owned()),
            Value::Integer(self.epoch.into()),
            Value::Integer(self.version.into()),
        ]))
    }

    /// The confirmation a decrypted report carries, if it is one (anything
    /// else is a reading).
    pub fn parse(plaintext: &[u8]) -> Option<Self> {
        // Cheap test first: readings are the common case.
        if plaintext.len() > 96 || plaintext.first() != Some(&0x83) {
            return None;
        }
        let Ok(Value::Array(items)) = decode_exact(plaintext, 96) else {
            return None;
        };
        let [Value::Text(label), epoch, version] = items.as_slice() else {
            return None;
        };
        if label != ACK_LABEL {
            return None;
        }
        Some(Self {
            epoch: u32::try_from(uint(epoch).ok()?).ok()?,
            version: uint(version).ok()?,
        })
    }
}

/// First element of a meter's acknowledgement of a transmission order (a
/// report's plaintext).
pub const TRANSMISSION_ACK_LABEL: &str = "sealcast meter transmission ack v1";

/// A meter's acknowledgement of the headend's transmission order
/// (`sealcast_group::transmission`, carried per meter in a bundle): the
/// version it holds. It travels as the plaintext of an ordinary report, so
/// it is encrypted for the headend and authenticated end to end, and it is
/// sent even while the order stops the meter's readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmissionAck {
    /// The order version the meter holds.
    pub version: u64,
}

impl TransmissionAck {
    /// The report plaintext carrying it:
    /// `[ "sealcast meter transmission ack v1", version ]`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode(&Value::Array(vec![
            Value::Text(TRANSMISSION_ACK_LABEL.to_owned()),
            Value::Integer(self.version.into()),
        ]))
    }

    /// The acknowledgement a decrypted report carries, if it is one.
    pub fn parse(plaintext: &[u8]) -> Option<Self> {
        if plaintext.len() > 96 || plaintext.first() != Some(&0x82) {
            return None;
        }
        let Ok(Value::Array(items)) = decode_exact(plaintext, 96) else {
            return None;
        };
        let [Value::Text(label), version] = items.as_slice() else {
            return None;
        };
        if label != TRANSMISSION_ACK_LABEL {
            return None;
        }
        Some(Self {
            version: uint(version).ok()?,
        })
    }
}

/// What the headend sends one DAP to relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The headend.
    pub headend: EntityId,
    /// The DAP that relays it.
    pub dap: EntityId,
    /// When the headend signed it.
    pub issued: UnixMillis,
    /// Key deliveries, each for one meter.
    pub deliveries: Vec<(EntityId, Vec<u8>)>,
    /// The configuration command broadcast (for the meter group's target).
    pub command: Option<Vec<u8>>,
}

impl Bundle {
    /// Signs the bundle with the headend's key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>> {
        if self.deliveries.len() > MAX_BUNDLE_DELIVERIES {
            return Err(Error::Refused("too many deliveries for one bundle"));
        }
        let payload = encode(&Value::Array(vec![
            id_value(&self.headend),
            id_value(&self.dap),
            Value::Integer(self.issued.get().into()),
            Value::Array(
                self.deliveries
                    .iter()
                    .map(|(m, d)| Value::Array(vec![id_value(m), Value::Bytes(d.clone())]))
                    .collect(),
            ),
            self.command
                .as_ref()
                .map_or(Value::Null, |c| Value::Bytes(c.clone())),
        ]))?;
        let signed = sign_statement(&self.headend, key, LABEL_DOWNLINK, &payload);
        if signed.len() > MAX_BUNDLE_LEN {
            return Err(Error::Refused("bundle larger than MAX_BUNDLE_LEN"));
        }
        Ok(signed)
    }

    /// Whether `bytes` claim to be a bundle (a cheap test for routing; the
    /// signature is checked by [`Bundle::open`]).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.len() <= MAX_BUNDLE_LEN
            && UnverifiedStatement::parse(bytes, MAX_BUNDLE_LEN)
                .is_ok_and(|s| s.payload().starts_with(&[0x85]))
    }

    /// Verifies a bundle at `dap`: signed by `headend`, naming this DAP,
    /// issued within [`BUNDLE_MAX_AGE_MS`] of `now`.
    pub fn open(
        bytes: &[u8],
        dap: &EntityId,
        headend: &EntityId,
        headend_key: &VerifyingKey,
        now: UnixMillis,
    ) -> Result<Self> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(Error::Refused("bundle larger than MAX_BUNDLE_LEN"));
        }
        let statement = UnverifiedStatement::parse(bytes, MAX_BUNDLE_LEN)?;
        if statement.signer() != headend {
            return Err(Error::Refused("bundle not signed by the headend"));
        }
        let payload = statement.verify(headend_key, LABEL_DOWNLINK)?;
        let Value::Array(items) = decode_exact(&payload, MAX_BUNDLE_LEN)? else {
            return Err(malformed("bundle is not an array"));
        };
        let [from, to, issued, Value::Array(deliveries), command] = items.as_slice() else {
            return Err(malformed("bundle has the wrong shape"));
        };
        if text_id(from)? != *headend {
            return Err(Error::Refused("bundle signer is not the headend it names"));
        }
        if text_id(to)? != *dap {
            return Err(Error::Refused("bundle is for another DAP"));
        }
        let issued = UnixMillis::new(uint(issued)?);
        if issued.get().abs_diff(now.get()) > BUNDLE_MAX_AGE_MS {
            return Err(Error::Refused("bundle is stale or from the future"));
        }
        if deliveries.len() > MAX_BUNDLE_DELIVERIES {
            return Err(malformed("too many deliveries in a bundle"));
        }
        let deliveries = deliveries
            .iter()
            .map(|d| match d {
                Value::Array(pair) => match pair.as_slice() {
                    [m, Value::Bytes(b)] => Ok((text_id(m)?, b.clone())),
                    _ => Err(malformed("delivery entry has the wrong shape")),
                },
                _ => Err(malformed("delivery entry is not an array")),
            })
            .collect::<Result<Vec<_>>>()?;
        let command = match command {
            Value::Null => None,
            Value::Bytes(b) => Some(b.clone()),
            _ => return Err(malformed("command is neither bytes nor null")),
        };
        Ok(Self {
            headend: headend.clone(),
            dap: dap.clone(),
            issued,
            deliveries,
            command,
        })
    }
}

fn headend_signer(headend: &EntityCredential) -> Result<Vec<AuthorizedSigner>> {
    Ok(vec![AuthorizedSigner {
        sender_id: SenderId::new(HEADEND_SENDER_ID)?,
        entity: headend.id().clone(),
        verifying_key: headend.signing_key().verifying_key(),
    }])
}

/// The headend's side of the meter group: the key of the current epoch,
/// the next sequence number of its commands, the configuration in force
/// and what each meter confirmed. Every change is made on a copy
/// (`Clone`), saved, then swapped in: check → persist → apply.
#[derive(Clone)]
pub struct HeadendDownlink {
    material: GroupKeyMaterial,
    next_seq: u64,
    config: Option<ConfigCommand>,
    acks: BTreeMap<EntityId, MeterAck>,
}

impl core::fmt::Debug for HeadendDownlink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeadendDownlink")
            .field("group", self.material.group())
            .field("epoch", &self.material.epoch())
            .field("version", &self.version())
            .field("acks", &self.acks.len())
            .finish_non_exhaustive()
    }
}

impl HeadendDownlink {
    /// A new meter group `group` at epoch 1 with a fresh random key.
    pub fn create<R: CryptoRng + ?Sized>(
        group: GroupId,
        headend: &EntityCredential,
        rng: &mut R,
    ) -> Result<Self> {
        let material = GroupKeyMaterial::generate(
            group,
            Epoch::new(1),
            GROUP_ALG,
            headend_signer(headend)?,
            None,
            rng,
        )?;
        Ok(Self {
            material,
            next_seq: 0,
            config: None,
            acks: BTreeMap::new(),
        })
    }

    /// The meter group.
    pub fn group(&self) -> &GroupId {
        self.material.group()
    }

    /// Its current epoch.
    pub fn epoch(&self) -> Epoch {
        self.material.epoch()
    }

    /// The configuration version in force (0: none issued).
    pub fn version(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.version)
    }

    /// The configuration in force.
    pub fn config(&self) -> Option<&ConfigCommand> {
        self.config.as_ref()
    }

    /// What each meter confirmed.
    pub fn acks(&self) -> &BTreeMap<EntityId, MeterAck> {
        &self.acks
    }

    /// Whether `meter` holds the current key and configuration.
    pub fn is_current(&self, meter: &EntityId) -> (bool, bool) {
        match self.acks.get(meter) {
            Some(a) => (
                a.epoch == self.epoch().get(),
                a.epoch == self.epoch().get() && a.version >= self.version(),
            ),
            None => (false, self.version() == 0),
        }
    }

    /// Issues the next configuration version with `settings` (on a copy:
    /// save it, then use it).
    pub fn with_config(&self, settings: BTreeMap<String, String>) -> Result<Self> {
        let command = ConfigCommand {
            version: self
                .version()
                .checked_add(1)
                .ok_or(Error::Refused("configuration versions exhausted"))?,
            settings,
        };
        command.check()?;
        let mut next = self.clone();
        next.config = Some(command);
        Ok(next)
    }

    /// Moves the group to a fresh random key (a new epoch), for evicting
    /// meters: they cannot follow. Sequence numbers start again under the
    /// new key.
    pub fn rekeyed<R: CryptoRng + ?Sized>(
        &self,
        headend: &EntityCredential,
        rng: &mut R,
    ) -> Result<Self> {
        let epoch = self
            .epoch()
            .next()
            .ok_or(Error::Refused("meter group epochs exhausted"))?;
        let mut next = self.clone();
        next.material = GroupKeyMaterial::generate(
            self.group().clone(),
            epoch,
            GROUP_ALG,
            headend_signer(headend)?,
            None,
            rng,
        )?;
        next.next_seq = 0;
        Ok(next)
    }

    /// Takes the next sequence number (on a copy: save it before the
    /// number is used, so a restart never seals twice with one).
    pub fn take_seq(&self) -> Result<(Self, SeqNum)> {
        let seq = SeqNum::new(self.next_seq)?;
        let mut next = self.clone();
        next.next_seq = self.next_seq + 1;
        Ok((next, seq))
    }

    /// Seals the configuration in force as a broadcast for `target` with
    /// `seq` (taken by [`Self::take_seq`] and saved).
    pub fn seal_command(
        &self,
        headend: &EntityCredential,
        seq: SeqNum,
        now: UnixMillis,
        target: &str,
    ) -> Result<Vec<u8>> {
        let config = self
            .config
            .as_ref()
            .ok_or(Error::Refused("no configuration issued"))?;
        let sender = BroadcastSender::new(&self.material, headend.id(), headend.signing_key())?;
        Ok(sender.seal(seq, now, target, &config.encode()?)?)
    }

    /// Seals the current group key for `meter`.
    pub fn seal_delivery<R: CryptoRng + ?Sized>(
        &self,
        headend: &EntityCredential,
        meter: &EntityId,
        meter_key: &X25519Public,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        Ok(seal_key_delivery(
            headend.id(),
            headend.signing_key(),
            meter,
            meter_key,
            &self.material,
            rng,
        )?)
    }

    /// Records a meter's confirmation; false when it tells nothing new.
    /// (Confirmations arrive end to end in the meter's own reports.)
    pub fn record_ack(&mut self, meter: &EntityId, ack: MeterAck) -> bool {
        if ack.epoch > self.epoch().get() || ack.version > self.version() {
            return false;
        }
        match self.acks.get(meter) {
            Some(old) if (old.epoch, old.version) >= (ack.epoch, ack.version) => false,
            _ => {
                self.acks.insert(meter.clone(), ack);
                true
            }
        }
    }

    /// Forgets what `meter` confirmed (it was removed or revoked).
    pub fn forget(&mut self, meter: &EntityId) -> bool {
        self.acks.remove(meter).is_some()
    }

    /// The state to save (holds the group key: keep it 0600). CBOR
    /// `[1, material, next_seq, config / null, [[meter, epoch, version]…]]`.
    pub fn export(&self) -> Result<Zeroizing<Vec<u8>>> {
        let material = self.material.to_cbor()?;
        let value = Value::Array(vec![
            Value::Integer(STATE_VERSION.into()),
            Value::Bytes(material.to_vec()),
            Value::Integer(self.next_seq.into()),
            self.config.as_ref().map_or(Value::Null, |c| c.to_value()),
            Value::Array(
                self.acks
                    .iter()
                    .map(|(m, a)| {
                        Value::Array(vec![
                            id_value(m),
                            Value::Integer(a.epoch.into()),
                            Value::Integer(a.version.into()),
                        ])
                    })
                    .collect(),
            ),
        ]);
        let out = Zeroizing::new(encode(&value)?);
        if let Value::Array(mut items) = value
            && let Some(Value::Bytes(b)) = items.get_mut(1)
        {
            zeroize::Zeroize::zeroize(b);
        }
        Ok(out)
    }

    /// Restores saved state; the group's signer must be `headend`.
    pub fn import(bytes: &[u8], headend: &EntityCredential) -> Result<Self> {
        let state = |what: &str| Error::State(format!("meter downlink state: {what}"));
        let value = decode_exact(bytes, MAX_STATE_LEN).map_err(|_| state("not CBOR"))?;
        let Value::Array(mut items) = value else {
            return Err(state("not an array"));
        };
        if items.len() != 5 || uint(&items[0]).ok() != Some(STATE_VERSION) {
            return Err(state("unknown version or shape"));
        }
        let Value::Bytes(mut material_bytes) = std::mem::replace(&mut items[1], Value::Null) else {
            return Err(state("no key material"));
        };
        let material = GroupKeyMaterial::from_cbor(&material_bytes);
        zeroize::Zeroize::zeroize(&mut material_bytes);
        let material = material?;
        if material.signers() != headend_signer(headend)?.as_slice() {
            return Err(state("the meter group's signer is not this headend's key"));
        }
        let next_seq = uint(&items[2]).map_err(|_| state("sequence"))?;
        let config = match &items[3] {
            Value::Null => None,
            v => Some(ConfigCommand::from_value(v).map_err(|_| state("configuration"))?),
        };
        let Value::Array(acks) = &items[4] else {
            return Err(state("confirmations"));
        };
        let mut map = BTreeMap::new();
        for a in acks {
            let Value::Array(t) = a else {
                return Err(state("confirmation"));
            };
            let [m, e, v] = t.as_slice() else {
                return Err(state("confirmation"));
            };
            map.insert(
                text_id(m)?,
                MeterAck {
                    epoch: u32::try_from(uint(e)?).map_err(|_| state("epoch"))?,
                    version: uint(v)?,
                },
            );
        }
        Ok(Self {
            material,
            next_seq,
            config,
            acks: map,
        })
    }
}

/// What a meter did with one downlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterUpdate {
    /// A newer group key installed (its epoch).
    KeyInstalled(u32),
    /// The key of this epoch (or a newer one) is already held: confirm
    /// again, nothing changed.
    KeyHeld(u32),
    /// A newer configuration applied.
    Applied(ConfigCommand),
    /// A configuration not newer than the one held: confirm again,
    /// nothing changed.
    AlreadyApplied(u64),
}

/// The meter's side of the downlink: the group key it holds, the replay
/// window of the headend's broadcasts, and the configuration it applied.
/// Like the headend side, changes are made on a copy, saved, then kept.
#[derive(Clone)]
pub struct MeterDownlink {
    material: Option<GroupKeyMaterial>,
    window: SeqWindow,
    config: Option<ConfigCommand>,
}

impl core::fmt::Debug for MeterDownlink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MeterDownlink")
            .field("epoch", &self.epoch())
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl Default for MeterDownlink {
    fn default() -> Self {
        Self {
            material: None,
            window: SeqWindow::new(),
            config: None,
        }
    }
}

impl MeterDownlink {
    /// Epoch of the group key held (0: none).
    pub fn epoch(&self) -> u32 {
        self.material.as_ref().map_or(0, |m| m.epoch().get())
    }

    /// Version of the configuration applied (0: none).
    pub fn version(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.version)
    }

    /// The configuration applied.
    pub fn config(&self) -> Option<&ConfigCommand> {
        self.config.as_ref()
    }

    /// What to confirm.
    pub fn ack(&self) -> MeterAck {
        MeterAck {
            epoch: self.epoch(),
            version: self.version(),
        }
    }

    /// Opens a key delivery for `meter` signed by `headend`; returns the
    /// new state (to save) and what happened. A delivery of an older epoch
    /// than the one held is refused; of the same epoch, only re-confirmed.
    pub fn on_delivery(
        &self,
        meter: &EntityCredential,
        headend: &EntityId,
        headend_key: &VerifyingKey,
        expected_group: &GroupId,
        bytes: &[u8],
    ) -> Result<(Self, MeterUpdate)> {
        let material = open_key_delivery(
            meter.id(),
            meter.agreement_secret(),
            headend,
            headend_key,
            bytes,
        )?;
        if material.group() != expected_group {
            return Err(Error::Refused("key delivery for another group"));
        }
        let signer_ok = material.signers().len() == 1
            && material.signers()[0].entity == *headend
            && material.signers()[0].verifying_key == *headend_key;
        if !signer_ok {
            return Err(Error::Refused(
                "the delivered group lists a signer other than the headend",
            ));
        }
        let epoch = material.epoch().get();
        match epoch.cmp(&self.epoch()) {
            core::cmp::Ordering::Less => Err(Error::Refused("key delivery of an older epoch")),
            core::cmp::Ordering::Equal => Ok((self.clone(), MeterUpdate::KeyHeld(epoch))),
            core::cmp::Ordering::Greater => {
                let mut next = self.clone();
                next.material = Some(material);
                // A new key: the headend's numbers start again.
                next.window = SeqWindow::new();
                Ok((next, MeterUpdate::KeyInstalled(epoch)))
            }
        }
    }

    /// Opens a command broadcast received on `target`: the headend's
    /// signature inside the group encryption, the replay window, then the
    /// version. Returns the new state (to save) and what happened.
    pub fn on_command(
        &self,
        bytes: &[u8],
        target: &str,
        now: UnixMillis,
    ) -> Result<(Self, MeterUpdate)> {
        let material = self
            .material
            .as_ref()
            .ok_or(Error::Refused("no meter group key yet"))?;
        let ctx = GroupContext::new(material)?;
        let sender = SenderId::new(HEADEND_SENDER_ID)?;
        let mut receiver = BroadcastReceiver::new(ctx, ReplayPolicy::default())?;
        receiver.restore_window(sender.clone(), self.window.clone());
        let opened = receiver.open(bytes, target, now)?;
        let command = ConfigCommand::decode(&opened.payload)?;
        let mut next = self.clone();
        if let Some(w) = receiver.window(&sender) {
            next.window = w.clone();
        }
        if command.version <= self.version() {
            return Ok((next, MeterUpdate::AlreadyApplied(self.version())));
        }
        next.config = Some(command.clone());
        Ok((next, MeterUpdate::Applied(command)))
    }

    /// The state to save (holds the group key: keep it 0600). CBOR
    /// `[1, material / null, window, config / null]`.
    pub fn export(&self) -> Result<Zeroizing<Vec<u8>>> {
        let material = self.material.as_ref().map(|m| m.to_cbor()).transpose()?;
        let value = Value::Array(vec![
            Value::Integer(STATE_VERSION.into()),
            material
                .as_ref()
                .map_or(Value::Null, |m| Value::Bytes(m.to_vec())),
            Value::Bytes(self.window.to_bytes()),
            self.config.as_ref().map_or(Value::Null, |c| c.to_value()),
        ]);
        let out = Zeroizing::new(encode(&value)?);
        if let Value::Array(mut items) = value
            && let Some(Value::Bytes(b)) = items.get_mut(1)
        {
            zeroize::Zeroize::zeroize(b);
        }
        Ok(out)
    }

    /// Restores saved state.
    pub fn import(bytes: &[u8]) -> Result<Self> {
        let state = |what: &str| Error::State(format!("meter downlink state: {what}"));
        let value = decode_exact(bytes, MAX_STATE_LEN).map_err(|_| state("not CBOR"))?;
        let Value::Array(mut items) = value else {
            return Err(state("not an array"));
        };
        if items.len() != 4 || uint(&items[0]).ok() != Some(STATE_VERSION) {
            return Err(state("unknown version or shape"));
        }
        let material = match std::mem::replace(&mut items[1], Value::Null) {
            Value::Null => None,
            Value::Bytes(mut b) => {
                let m = GroupKeyMaterial::from_cbor(&b);
                zeroize::Zeroize::zeroize(&mut b);
                Some(m.map_err(|_| state("key material"))?)
            }
            _ => return Err(state("key material")),
        };
        let Value::Bytes(window) = &items[2] else {
            return Err(state("window"));
        };
        let window = SeqWindow::from_bytes(window).map_err(|_| state("window"))?;
        let config = match &items[3] {
            Value::Null => None,
            v => Some(ConfigCommand::from_value(v).map_err(|_| state("configuration"))?),
        };
        Ok(Self {
            material,
            window,
            config,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sealcast_core::testrng::TestRng;

    fn cred(name: &str, seed: u64) -> EntityCredential {
        EntityCredential::generate(EntityId::new(name).unwrap(), &mut TestRng::new(seed))
    }

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TARGET: &str = "sealcast/g/meters/command";

    #[test]
    fn a_meter_installs_the_key_applies_newer_configs_only_and_refuses_forgeries() {
        let mut rng = TestRng::new(7);
        let headend = cred("headend", 1);
        let meter = cred("meter-1", 2);
        let group = GroupId::new("meters").unwrap();
        let hk = headend.signing_key().verifying_key();
        let h = HeadendDownlink::create(group.clone(), &headend, &mut rng).unwrap();
        let delivery = h
            .seal_delivery(
                &headend,
                meter.id(),
                meter.public().agreement_key(),
                &mut rng,
            )
            .unwrap();
        let m = MeterDownlink::default();
        // Not the headend's key: refused.
        let other = cred("headend", 3);
        let ok = m.on_delivery(
            &meter,
            headend.id(),
            &other.signing_key().verifying_key(),
            &group,
            &delivery,
        );
        assert!(ok.is_err());
        // Another group name: refused.
        assert!(
            m.on_delivery(
                &meter,
                headend.id(),
                &hk,
                &GroupId::new("other").unwrap(),
                &delivery
            )
            .is_err()
        );
        let (m, up) = m
            .on_delivery(&meter, headend.id(), &hk, &group, &delivery)
            .unwrap();
        assert_eq!(up, MeterUpdate::KeyInstalled(1));
        assert_eq!(
            m.on_delivery(&meter, headend.id(), &hk, &group, &delivery)
                .unwrap()
                .1,
            MeterUpdate::KeyHeld(1)
        );
        // Version 1.
        let h = h.with_config(settings(&[("interval_s", "900")])).unwrap();
        let (h, seq) = h.take_seq().unwrap();
        let c1 = h
            .seal_command(&headend, seq, UnixMillis::new(1000), TARGET)
            .unwrap();
        // Another target: refused.
        assert!(
            m.on_command(&c1, "elsewhere", UnixMillis::new(1000))
                .is_err()
        );
        let (m, up) = m.on_command(&c1, TARGET, UnixMillis::new(1000)).unwrap();
        assert!(matches!(up, MeterUpdate::Applied(ref c) if c.version == 1));
        assert_eq!(m.config().unwrap().settings["interval_s"], "900");
        // The same bytes again: the window refuses them.
        assert!(m.on_command(&c1, TARGET, UnixMillis::new(1000)).is_err());
        // Version 2, then version 1 re-sealed with a later number: kept at 2.
        let h2 = h.with_config(settings(&[("interval_s", "60")])).unwrap();
        let (h2, seq) = h2.take_seq().unwrap();
        let c2 = h2
            .seal_command(&headend, seq, UnixMillis::new(2000), TARGET)
            .unwrap();
        let (m, _) = m.on_command(&c2, TARGET, UnixMillis::new(2000)).unwrap();
        let (h1, seq) = h2.take_seq().unwrap();
        let mut old = h1.clone();
        old.config = h.config.clone();
        let c1again = old
            .seal_command(&headend, seq, UnixMillis::new(3000), TARGET)
            .unwrap();
        let (m, up) = m
            .on_command(&c1again, TARGET, UnixMillis::new(3000))
            .unwrap();
        assert_eq!(up, MeterUpdate::AlreadyApplied(2));
        assert_eq!(m.version(), 2);
        // A group of the same name keyed by someone else: refused.
        let forger = HeadendDownlink::create(group.clone(), &other, &mut rng)
            .unwrap()
            .with_config(settings(&[("interval_s", "1")]))
            .unwrap();
        let forged = forger
            .seal_command(&other, SeqNum::new(9).unwrap(), UnixMillis::new(1), TARGET)
            .unwrap();
        assert!(
            m.on_command(&forged, TARGET, UnixMillis::new(4000))
                .is_err()
        );
        // State round trips.
        let back = MeterDownlink::import(&m.export().unwrap()).unwrap();
        assert_eq!(back.version(), 2);
        assert_eq!(back.epoch(), 1);
        assert!(back.on_command(&c2, TARGET, UnixMillis::new(5000)).is_err());
        let hb = HeadendDownlink::import(&h1.export().unwrap(), &headend).unwrap();
        assert_eq!(hb.version(), 2);
        assert!(HeadendDownlink::import(&h1.export().unwrap(), &other).is_err());
    }

    #[test]
    fn a_rekey_leaves_an_evicted_meter_behind() {
        let mut rng = TestRng::new(9);
        let headend = cred("headend", 1);
        let meter = cred("meter-1", 2);
        let group = GroupId::new("meters").unwrap();
        let hk = headend.signing_key().verifying_key();
        let h = HeadendDownlink::create(group.clone(), &headend, &mut rng).unwrap();
        let d1 = h
            .seal_delivery(
                &headend,
                meter.id(),
                meter.public().agreement_key(),
                &mut rng,
            )
            .unwrap();
        let (m, _) = MeterDownlink::default()
            .on_delivery(&meter, headend.id(), &hk, &group, &d1)
            .unwrap();
        let h = h
            .rekeyed(&headend, &mut rng)
            .unwrap()
            .with_config(settings(&[]))
            .unwrap();
        let (h, seq) = h.take_seq().unwrap();
        let c = h
            .seal_command(&headend, seq, UnixMillis::new(1), TARGET)
            .unwrap();
        assert!(m.on_command(&c, TARGET, UnixMillis::new(1)).is_err());
        // An old delivery replayed after the new key: refused.
        let d2 = h
            .seal_delivery(
                &headend,
                meter.id(),
                meter.public().agreement_key(),
                &mut rng,
            )
            .unwrap();
        let (m, _) = m
            .on_delivery(&meter, headend.id(), &hk, &group, &d2)
            .unwrap();
        assert!(
            m.on_delivery(&meter, headend.id(), &hk, &group, &d1)
                .is_err()
        );
        assert_eq!(
            m.on_command(&c, TARGET, UnixMillis::new(1))
                .unwrap()
                .0
                .version(),
            1
        );
    }

    #[test]
    fn acks_bundles_and_bounds() {
        let ack = MeterAck {
            epoch: 3,
            version: 7,
        };
        assert_eq!(MeterAck::parse(&ack.encode().unwrap()), Some(ack));
        assert_eq!(MeterAck::parse(b"1234.5"), None);
        assert_eq!(MeterAck::parse(&[0x83, 0xff]), None);
        let headend = cred("headend", 1);
        let dap = EntityId::new("dap-1").unwrap();
        let b = Bundle {
            headend: headend.id().clone(),
            dap: dap.clone(),
            issued: UnixMillis::new(1_000_000),
            deliveries: vec![(EntityId::new("meter-1").unwrap(), vec![1, 2, 3])],
            command: Some(vec![9]),
        };
        let bytes = b.seal(headend.signing_key()).unwrap();
        assert!(Bundle::looks_like(&bytes));
        let hk = headend.signing_key().verifying_key();
        let now = UnixMillis::new(1_000_000);
        assert_eq!(
            Bundle::open(&bytes, &dap, headend.id(), &hk, now).unwrap(),
            b
        );
        let other = EntityId::new("dap-2").unwrap();
        assert!(Bundle::open(&bytes, &other, headend.id(), &hk, now).is_err());
        let late = UnixMillis::new(1_000_000 + BUNDLE_MAX_AGE_MS + 1);
        assert!(Bundle::open(&bytes, &dap, headend.id(), &hk, late).is_err());
        let forger = cred("headend", 5);
        let forged = b.seal(forger.signing_key()).unwrap();
        assert!(Bundle::open(&forged, &dap, headend.id(), &hk, now).is_err());
        assert!(check_setting("bad name", "x").is_err());
        assert!(check_setting("ok", "line\nbreak").is_err());
        let mut h = HeadendDownlink::create(
            GroupId::new("meters").unwrap(),
            &headend,
            &mut TestRng::new(1),
        )
        .unwrap();
        let m = EntityId::new("meter-1").unwrap();
        // Nothing issued: a meter with the key is current.
        assert!(!h.record_ack(
            &m,
            MeterAck {
                epoch: 2,
                version: 0
            }
        ));
        assert!(h.record_ack(
            &m,
            MeterAck {
                epoch: 1,
                version: 0
            }
        ));
        assert_eq!(h.is_current(&m), (true, true));
        let h = h.with_config(settings(&[("a", "b")])).unwrap();
        assert_eq!(h.is_current(&m), (true, false));
    }
}

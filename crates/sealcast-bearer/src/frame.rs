//! The wire format: key frames, data frames and MSK deliveries.
//!
//! Every message starts with a clear header of fixed layout (big-endian
//! integers) that names its key ids. The header is authenticated: it ends
//! the AEAD's additional data, after a context that binds the bearer
//! service (and, for a delivery, the device):
//!
//! ```text
//! context = "sealcast bearer v1" ‖ len(service_id) ‖ service_id            (frames)
//!         = "sealcast bearer v1" ‖ len(service_id) ‖ service_id
//!                                ‖ len(device_id) ‖ device_id              (MSK delivery)
//! AAD     = context ‖ header
//!
//! key frame (78 bytes), on the bearer, under the MSK:
//!   0      1      2..6        6..10       10..22     22..78
//!   ver=1  kind=1 msk_id u32  mtk_id u32  nonce(12)  AES-256-GCM(MSK, nonce, AAD(0..10),
//!                                                        mtk_key(32) ‖ mtk_not_after_ms u64) ‖ tag
//!
//! data frame (14 + bucket + 16 bytes), on the bearer, under the MTK:
//!   0      1      2..6        6..10       10..14       14..
//!   ver=1  kind=2 msk_id u32  mtk_id u32  counter u32  AES-256-GCM(MTK, nonce, AAD(0..14), padded) ‖ tag
//!   nonce  = mtk_id u32 ‖ 0x00000000 ‖ counter u32
//!   padded = len(topic) u8 ‖ topic ‖ len(payload) u32 ‖ payload ‖ 0x00 … up to the bucket size
//!
//! MSK delivery (74 bytes), point to point, under the device's MUK:
//!   0      1      2..6        6..18      18..74
//!   ver=1  kind=3 msk_id u32  nonce(12)  AES-256-GCM(MUK, nonce, AAD(0..6),
//!                                            msk_key(32) ‖ msk_not_after_ms u64) ‖ tag
//! ```
//!
//! The padded plaintext is exactly one of [`PADDING_BUCKETS`] long, so a
//! data frame's length reveals only the bucket, never the exact size of the
//! topic or the COSE object. Topic, group id (inside the COSE header) and
//! payload are all inside the ciphertext.
//!
//! Key frames and deliveries take a random nonce: the number of them under
//! one MSK or MUK is small, and a random nonce stays unique even if a
//! sender's MTK-id counter were ever restored from stale state. Data frames
//! use the counter nonce, unique per MTK because the counter never repeats
//! under one (random, never reused) MTK.

use sealcast_core::crypto::{AeadKey, NONCE_LEN, TAG_LEN};
use sealcast_core::ids::{EntityId, UnixMillis};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::ids::{FrameCounter, MskId, MtkId, Topic};
use crate::keys::{KEY_LEN, push_short};

/// The format version in byte 0 of every frame and delivery.
pub const VERSION: u8 = 1;
const KIND_KEY: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_DELIVERY: u8 = 3;

/// The label that starts every AAD of the bearer.
const CONTEXT_LABEL: &[u8] = b"sealcast bearer v1";

/// Clear header of a key frame: version, kind, MSK id, MTK id.
pub const KEY_HEADER_LEN: usize = 10;
/// Clear header of a data frame: version, kind, MSK id, MTK id, counter.
pub const DATA_HEADER_LEN: usize = 14;
/// Clear header of an MSK delivery: version, kind, MSK id.
pub const DELIVERY_HEADER_LEN: usize = 6;
/// Plaintext of a key frame or a delivery: a key and its expiry.
const KEY_PLAINTEXT_LEN: usize = KEY_LEN + 8;
/// Length of every key frame.
pub const KEY_FRAME_LEN: usize = KEY_HEADER_LEN + NONCE_LEN + KEY_PLAINTEXT_LEN + TAG_LEN;
/// Length of every MSK delivery.
pub const MSK_DELIVERY_LEN: usize = DELIVERY_HEADER_LEN + NONCE_LEN + KEY_PLAINTEXT_LEN + TAG_LEN;
/// The sizes a data frame's plaintext is padded to. A data frame is
/// `DATA_HEADER_LEN + bucket + 16` bytes long.
pub const PADDING_BUCKETS: [usize; 6] = [64, 256, 1024, 4096, 16_384, 65_536];
/// The largest padded plaintext.
pub const MAX_PLAINTEXT_LEN: usize = 65_536;
/// The largest frame of any kind; longer input is refused before parsing.
pub const MAX_FRAME_LEN: usize = DATA_HEADER_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;
/// Bytes of a data plaintext besides the topic and payload: the two lengths.
const DATA_PLAINTEXT_OVERHEAD: usize = 1 + 4;

/// The smallest padding bucket that holds `len` bytes.
pub fn bucket_for(len: usize) -> Option<usize> {
    PADDING_BUCKETS.iter().copied().find(|&b| b >= len)
}

/// The length of the data frame that carries a payload of `payload_len`
/// bytes on a topic of `topic_len` bytes, or `None` if it does not fit.
pub fn data_frame_len(topic_len: usize, payload_len: usize) -> Option<usize> {
    let plain = DATA_PLAINTEXT_OVERHEAD
        .checked_add(topic_len)?
        .checked_add(payload_len)?;
    Some(DATA_HEADER_LEN + bucket_for(plain)? + TAG_LEN)
}

/// The kind of a bearer frame.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Carries an MTK under the MSK.
    Key,
    /// Carries one COSE object under the MTK.
    Data,
}

/// What the clear header of a frame says, read without any key.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    /// Key frame or data frame.
    pub kind: FrameKind,
    /// The MSK the frame depends on.
    pub msk_id: MskId,
    /// The MTK the frame carries (key frame) or is protected with (data).
    pub mtk_id: MtkId,
    /// The frame counter of a data frame.
    pub counter: Option<FrameCounter>,
}

/// Reads a frame's clear header and checks its length, without keys. What
/// it returns is not authenticated yet; an I/O shell may use it to
/// demultiplex or to count, never to decide anything about trust.
///
/// # Errors
///
/// [`Error::TooLarge`] or [`Error::Malformed`].
pub fn peek(frame: &[u8]) -> Result<FrameInfo> {
    Ok(match parse_frame(frame)? {
        ParsedFrame::Key(k) => FrameInfo {
            kind: FrameKind::Key,
            msk_id: k.msk_id,
            mtk_id: k.mtk_id,
            counter: None,
        },
        ParsedFrame::Data(d) => FrameInfo {
            kind: FrameKind::Data,
            msk_id: d.msk_id,
            mtk_id: d.mtk_id,
            counter: Some(d.counter),
        },
    })
}

// ---------------------------------------------------------------------------
// Parsing

pub(crate) struct KeyFrame<'a> {
    pub(crate) header: &'a [u8],
    pub(crate) msk_id: MskId,
    pub(crate) mtk_id: MtkId,
    pub(crate) nonce: &'a [u8],
    pub(crate) sealed: &'a [u8],
}

pub(crate) struct DataFrame<'a> {
    pub(crate) header: &'a [u8],
    pub(crate) msk_id: MskId,
    pub(crate) mtk_id: MtkId,
    pub(crate) counter: FrameCounter,
    pub(crate) sealed: &'a [u8],
}

pub(crate) struct Delivery<'a> {
    pub(crate) header: &'a [u8],
    pub(crate) msk_id: MskId,
    pub(crate) nonce: &'a [u8],
    pub(crate) sealed: &'a [u8],
}

pub(crate) enum ParsedFrame<'a> {
    Key(KeyFrame<'a>),
    Data(DataFrame<'a>),
}

fn be_u32(bytes: &[u8], at: usize) -> Result<u32> {
    let b: [u8; 4] = bytes
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Malformed("truncated header"))?;
    Ok(u32::from_be_bytes(b))
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8])> {
    bytes
        .split_at_checked(at)
        .ok_or(Error::Malformed("truncated"))
}

/// Version and kind of any bearer message.
fn version_and_kind(bytes: &[u8]) -> Result<u8> {
    match bytes {
        [VERSION, kind, ..] => Ok(*kind),
        [_, _, ..] => Err(Error::Malformed("unknown bearer version")),
        _ => Err(Error::Malformed("truncated header")),
    }
}

/// Splits a frame into its parts. Checks lengths only; nothing here is
/// authenticated.
pub(crate) fn parse_frame(frame: &[u8]) -> Result<ParsedFrame<'_>> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(Error::TooLarge {
            what: "bearer frame",
            limit: MAX_FRAME_LEN,
        });
    }
    match version_and_kind(frame)? {
        KIND_KEY => {
            if frame.len() != KEY_FRAME_LEN {
                return Err(Error::Malformed("key frame length"));
            }
            let (header, rest) = split(frame, KEY_HEADER_LEN)?;
            let (nonce, sealed) = split(rest, NONCE_LEN)?;
            Ok(ParsedFrame::Key(KeyFrame {
                header,
                msk_id: MskId::new(be_u32(header, 2)?),
                mtk_id: MtkId::new(be_u32(header, 6)?),
                nonce,
                sealed,
            }))
        }
        KIND_DATA => {
            let (header, sealed) = split(frame, DATA_HEADER_LEN)?;
            let padded = sealed.len().checked_sub(TAG_LEN);
            if !padded.is_some_and(|n| PADDING_BUCKETS.contains(&n)) {
                return Err(Error::Malformed(
                    "data frame length is not a padding bucket",
                ));
            }
            Ok(ParsedFrame::Data(DataFrame {
                header,
                msk_id: MskId::new(be_u32(header, 2)?),
                mtk_id: MtkId::new(be_u32(header, 6)?),
                counter: FrameCounter::new(be_u32(header, 10)?),
                sealed,
            }))
        }
        KIND_DELIVERY => Err(Error::Malformed(
            "an MSK delivery is not a bearer frame (use handle_msk_delivery)",
        )),
        _ => Err(Error::Malformed("unknown frame kind")),
    }
}

/// Splits an MSK delivery into its parts.
pub(crate) fn parse_delivery(bytes: &[u8]) -> Result<Delivery<'_>> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(Error::TooLarge {
            what: "MSK delivery",
            limit: MAX_FRAME_LEN,
        });
    }
    if version_and_kind(bytes)? != KIND_DELIVERY {
        return Err(Error::Malformed("not an MSK delivery"));
    }
    if bytes.len() != MSK_DELIVERY_LEN {
        return Err(Error::Malformed("MSK delivery length"));
    }
    let (header, rest) = split(bytes, DELIVERY_HEADER_LEN)?;
    let (nonce, sealed) = split(rest, NONCE_LEN)?;
    Ok(Delivery {
        header,
        msk_id: MskId::new(be_u32(header, 2)?),
        nonce,
        sealed,
    })
}

// ---------------------------------------------------------------------------
// AAD and nonces

pub(crate) fn aad(service: &EntityId, device: Option<&EntityId>, header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT_LABEL.len() + 2 + 2 * EntityId::MAX_LEN + 16);
    out.extend_from_slice(CONTEXT_LABEL);
    push_short(&mut out, service.as_bytes());
    if let Some(device) = device {
        push_short(&mut out, device.as_bytes());
    }
    out.extend_from_slice(header);
    out
}

pub(crate) fn data_nonce(mtk_id: MtkId, counter: FrameCounter) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&mtk_id.get().to_be_bytes());
    nonce[8..].copy_from_slice(&counter.get().to_be_bytes());
    nonce
}

// ---------------------------------------------------------------------------
// Key plaintexts (key frames and deliveries)

pub(crate) fn key_plaintext(key: &[u8; KEY_LEN], not_after: UnixMillis) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(KEY_PLAINTEXT_LEN));
    out.extend_from_slice(key);
    out.extend_from_slice(&not_after.get().to_be_bytes());
    out
}

pub(crate) fn parse_key_plaintext(plain: &[u8]) -> Result<(&[u8], UnixMillis)> {
    if plain.len() != KEY_PLAINTEXT_LEN {
        return Err(Error::Malformed("key plaintext length"));
    }
    let (key, expiry) = split(plain, KEY_LEN)?;
    let expiry: [u8; 8] = expiry
        .try_into()
        .map_err(|_| Error::Malformed("key plaintext length"))?;
    Ok((key, UnixMillis::new(u64::from_be_bytes(expiry))))
}

fn seal_key_message<R: rand_core::CryptoRng + ?Sized>(
    header: &[u8],
    key: &AeadKey,
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let sealed = key.seal(&nonce, aad, plaintext)?;
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Builds a key frame that carries `mtk_plaintext` (normally
/// [`key_plaintext`]) under the MSK.
pub(crate) fn seal_key_frame<R: rand_core::CryptoRng + ?Sized>(
    service: &EntityId,
    msk_id: MskId,
    mtk_id: MtkId,
    msk: &AeadKey,
    mtk_plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let mut header = [0u8; KEY_HEADER_LEN];
    header[0] = VERSION;
    header[1] = KIND_KEY;
    header[2..6].copy_from_slice(&msk_id.get().to_be_bytes());
    header[6..10].copy_from_slice(&mtk_id.get().to_be_bytes());
    seal_key_message(
        &header,
        msk,
        &aad(service, None, &header),
        mtk_plaintext,
        rng,
    )
}

/// Builds an MSK delivery that carries `msk_plaintext` (normally
/// [`key_plaintext`]) under the MUK of (`service`, `device`).
pub(crate) fn seal_delivery<R: rand_core::CryptoRng + ?Sized>(
    service: &EntityId,
    device: &EntityId,
    msk_id: MskId,
    muk: &AeadKey,
    msk_plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let mut header = [0u8; DELIVERY_HEADER_LEN];
    header[0] = VERSION;
    header[1] = KIND_DELIVERY;
    header[2..6].copy_from_slice(&msk_id.get().to_be_bytes());
    seal_key_message(
        &header,
        muk,
        &aad(service, Some(device), &header),
        msk_plaintext,
        rng,
    )
}

// ---------------------------------------------------------------------------
// Data plaintexts

/// `len(topic) u8 ‖ topic ‖ len(payload) u32 ‖ payload ‖ zeros`, padded to
/// the smallest bucket that holds it.
pub(crate) fn encode_data_plaintext(topic: &Topic, payload: &[u8]) -> Result<Vec<u8>> {
    let too_large = Error::TooLarge {
        what: "topic and payload",
        limit: MAX_PLAINTEXT_LEN - DATA_PLAINTEXT_OVERHEAD,
    };
    let len = DATA_PLAINTEXT_OVERHEAD + topic.as_bytes().len() + payload.len();
    let bucket = bucket_for(len).ok_or(too_large.clone())?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| too_large)?;
    let mut out = Vec::with_capacity(bucket);
    push_short(&mut out, topic.as_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(bucket, 0);
    Ok(out)
}

/// Parses a padded data plaintext strictly: the lengths must fit, the topic
/// must be valid and every padding byte must be zero.
pub(crate) fn decode_data_plaintext(plain: &[u8]) -> Result<(Topic, Vec<u8>)> {
    if !PADDING_BUCKETS.contains(&plain.len()) {
        return Err(Error::Malformed("plaintext length is not a padding bucket"));
    }
    let (&topic_len, rest) = plain
        .split_first()
        .ok_or(Error::Malformed("empty plaintext"))?;
    let (topic, rest) = split(rest, usize::from(topic_len))?;
    let topic = Topic::from_bytes(topic)?;
    let (payload_len, rest) = split(rest, 4)?;
    let payload_len: [u8; 4] = payload_len
        .try_into()
        .map_err(|_| Error::Malformed("truncated payload length"))?;
    let payload_len = usize::try_from(u32::from_be_bytes(payload_len))
        .map_err(|_| Error::Malformed("payload length"))?;
    let (payload, padding) = split(rest, payload_len)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(Error::Malformed("non-zero padding"));
    }
    Ok((topic, payload.to_vec()))
}

/// Seals a padded plaintext into a data frame.
pub(crate) fn seal_data_frame(
    service: &EntityId,
    msk_id: MskId,
    mtk_id: MtkId,
    counter: FrameCounter,
    mtk: &AeadKey,
    padded: &[u8],
) -> Result<Vec<u8>> {
    let mut header = [0u8; DATA_HEADER_LEN];
    header[0] = VERSION;
    header[1] = KIND_DATA;
    header[2..6].copy_from_slice(&msk_id.get().to_be_bytes());
    header[6..10].copy_from_slice(&mtk_id.get().to_be_bytes());
    header[10..14].copy_from_slice(&counter.get().to_be_bytes());
    let sealed = mtk.seal(
        &data_nonce(mtk_id, counter),
        &aad(service, None, &header),
        padded,
    )?;
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&sealed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_for(0), Some(64));
        assert_eq!(bucket_for(64), Some(64));
        assert_eq!(bucket_for(65), Some(256));
        assert_eq!(bucket_for(65_536), Some(65_536));
        assert_eq!(bucket_for(65_537), None);
        assert_eq!(data_frame_len(3, 10), Some(14 + 64 + 16));
        assert_eq!(KEY_FRAME_LEN, 78);
        assert_eq!(MSK_DELIVERY_LEN, 74);
    }

    #[test]
    fn data_plaintext_round_trip_and_strictness() {
        let topic = Topic::new("g/7/cmd").unwrap();
        let plain = encode_data_plaintext(&topic, b"cose").unwrap();
        assert_eq!(plain.len(), 64);
        let (t, p) = decode_data_plaintext(&plain).unwrap();
        assert_eq!((t, p.as_slice()), (topic.clone(), b"cose".as_slice()));

        let mut bad = plain.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(decode_data_plaintext(&bad).is_err());
        let mut bad = plain.clone();
        bad[1 + 7 + 3] = 200; // payload length beyond the bucket
        assert!(decode_data_plaintext(&bad).is_err());
        let mut bad = plain.clone();
        bad[0] = 0; // empty topic
        assert!(decode_data_plaintext(&bad).is_err());
        assert!(decode_data_plaintext(&plain[..63]).is_err());

        let max = vec![0u8; MAX_PLAINTEXT_LEN - DATA_PLAINTEXT_OVERHEAD - 7];
        assert_eq!(encode_data_plaintext(&topic, &max).unwrap().len(), 65_536);
        let over = vec![0u8; max.len() + 1];
        assert!(matches!(
            encode_data_plaintext(&topic, &over),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn nonce_layout() {
        let n = data_nonce(MtkId::new(0x0102_0304), FrameCounter::new(0x0a0b_0c0d));
        assert_eq!(n, [1, 2, 3, 4, 0, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d]);
    }

    #[test]
    fn peek_refuses_short_long_and_foreign_input() {
        assert!(peek(&[]).is_err());
        assert!(peek(&[1]).is_err());
        assert!(peek(&[2, 1]).is_err());
        assert!(peek(&[1, 9]).is_err());
        assert!(peek(&[1, 1, 0, 0]).is_err());
        assert!(peek(&vec![0u8; MAX_FRAME_LEN + 1]).is_err());
        let mut delivery = vec![0u8; MSK_DELIVERY_LEN];
        delivery[0] = VERSION;
        delivery[1] = KIND_DELIVERY;
        assert!(peek(&delivery).is_err());
        let mut data = vec![0u8; DATA_HEADER_LEN + 64 + TAG_LEN];
        data[0] = VERSION;
        data[1] = KIND_DATA;
        data[13] = 9;
        let info = peek(&data).unwrap();
        assert_eq!(info.kind, FrameKind::Data);
        assert_eq!(info.counter, Some(FrameCounter::new(9)));
        data.pop();
        assert!(peek(&data).is_err());
    }
}

//! Primitive content in JSON or CBOR (TS-0004 §8.2, as the TS-0009 HTTP
//! and TS-0010 MQTT bindings carry it), the response status of a CSE's
//! answer, and the notifications a subscription sends.
//!
//! Everything here reads bytes from the network: sizes are bounded, every
//! field is checked, nothing panics (fuzzed: `onem2m_notification`).

use base64::Engine;
use serde_json::Value;

use crate::{Error, Result};

/// The largest primitive sealcast reads (a notification or an answer).
pub const MAX_PRIMITIVE: usize = 256 * 1024;

/// How primitive content is serialized (`Content-Type`, `Accept`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Serialization {
    /// `application/json` (the default).
    #[default]
    Json,
    /// `application/cbor`.
    Cbor,
}

impl Serialization {
    /// Parses `json` or `cbor`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "cbor" => Some(Self::Cbor),
            _ => None,
        }
    }

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Cbor => "application/cbor",
        }
    }

    /// The media type of content that creates a resource of type `ty`.
    pub fn create_content_type(self, ty: crate::resource::Type) -> String {
        format!("{};ty={}", self.media_type(), ty as u32)
    }

    /// The serialization a `Content-Type` names (parameters ignored).
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next()?.trim();
        match media {
            "application/json"
            | "application/vnd.onem2m-res+json"
            | "application/vnd.onem2m-ntfy+json" => Some(Self::Json),
            "application/cbor"
            | "application/vnd.onem2m-res+cbor"
            | "application/vnd.onem2m-ntfy+cbor" => Some(Self::Cbor),
            _ => None,
        }
    }

    /// `value` serialized.
    pub fn encode(self, value: &Value) -> Vec<u8> {
        match self {
            Self::Json => value.to_string().into_bytes(),
            Self::Cbor => {
                let mut out = Vec::new();
                // Writing into a Vec cannot fail, and a serde_json Value
                // always has a CBOR form.
                let _ = ciborium::into_writer(value, &mut out);
                out
            }
        }
    }

    /// `bytes` deserialized (at most [`MAX_PRIMITIVE`] bytes; an empty body
    /// is `null`).
    pub fn decode(self, bytes: &[u8]) -> Result<Value> {
        if bytes.len() > MAX_PRIMITIVE {
            return Err(Error::TooLarge { max: MAX_PRIMITIVE });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        match self {
            Self::Json => {
                serde_json::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))
            }
            Self::Cbor => {
                ciborium::from_reader(bytes).map_err(|e| Error::Serialization(e.to_string()))
            }
        }
    }
}

/// The content of a CSE's answer with response status code `rsc`: the
/// content for a success (2xxx), else [`Error::Refused`] with the CSE's
/// debug text.
pub fn check_response(rsc: u16, content: Value) -> Result<Value> {
    if (2000..3000).contains(&rsc) {
        return Ok(content);
    }
    let detail = content
        .get("m2m:dbg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(Error::Refused { rsc, detail })
}

/// The response status codes of an aggregated answer (`m2m:agr`, a
/// `<group>`'s fan-out): one per member, in order.
pub fn aggregated_status(content: &Value) -> Result<Vec<u16>> {
    let list = content
        .get("m2m:agr")
        .and_then(|a| a.get("m2m:rsp"))
        .and_then(Value::as_array)
        .ok_or(Error::Malformed("fan-out answer without m2m:agr"))?;
    list.iter()
        .map(|r| {
            r.get("rsc")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .ok_or(Error::Malformed("fan-out answer without rsc"))
        })
        .collect()
}

/// The resource identifier (`ri`) in a created resource's representation.
pub fn resource_id(content: &Value) -> Result<String> {
    content
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|r| r.get("ri"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Error::Malformed("created resource without ri"))
}

/// A `<contentInstance>` as a notification carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentInstance {
    /// The decoded `con`.
    pub content: Vec<u8>,
    /// The sealcast target (`lbl`).
    pub target: String,
    /// The originator the CSE accepted (`cr`), if it recorded one.
    pub creator: Option<String>,
    /// The parent container's resource id (`pi`).
    pub parent: String,
}

impl core::fmt::Debug for ContentInstance {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContentInstance")
            .field("content_len", &self.content.len())
            .field("target", &self.target)
            .field("creator", &self.creator)
            .field("parent", &self.parent)
            .finish()
    }
}

/// What a `<subscription>` notified (`m2m:sgn`).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A verification request for a new subscription (`vrq`): answer 2000.
    Verification {
        /// The subscription.
        subscription: String,
    },
    /// The subscription was deleted (`sud`).
    Deleted {
        /// The subscription.
        subscription: String,
    },
    /// A `<contentInstance>` was created in the subscribed container.
    Created {
        /// The subscription (`sur`).
        subscription: String,
        /// The new instance.
        instance: ContentInstance,
    },
}

/// Parses a notification's content.
pub fn parse_notification(content: &Value) -> Result<Notification> {
    let sgn = content
        .get("m2m:sgn")
        .ok_or(Error::Malformed("notification without m2m:sgn"))?;
    let subscription = sgn
        .get("sur")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if sgn.get("vrq").and_then(Value::as_bool) == Some(true) {
        return Ok(Notification::Verification { subscription });
    }
    if sgn.get("sud").and_then(Value::as_bool) == Some(true) {
        return Ok(Notification::Deleted { subscription });
    }
    let cin = sgn
        .get("nev")
        .and_then(|n| n.get("rep"))
        .and_then(|r| r.get("m2m:cin"))
        .ok_or(Error::Malformed("notification without a contentInstance"))?;
    let con = cin
        .get("con")
        .and_then(Value::as_str)
        .ok_or(Error::Malformed("contentInstance without con"))?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(con)
        .map_err(|_| Error::Malformed("con is not base64"))?;
    let cnf = cin.get("cnf").and_then(Value::as_str).unwrap_or_default();
    if !cnf.starts_with("application/cose") || !cnf.ends_with(":1") {
        return Err(Error::Malformed("cnf is not application/cose in base64"));
    }
    let target = match cin.get("lbl").and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::String(t)]) => t.clone(),
        _ => {
            return Err(Error::Malformed(
                "contentInstance without exactly one label",
            ));
        }
    };
    let creator = cin.get("cr").and_then(Value::as_str).map(str::to_owned);
    let parent = cin
        .get("pi")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Notification::Created {
        subscription,
        instance: ContentInstance {
            content,
            target,
            creator,
            parent,
        },
    })
}

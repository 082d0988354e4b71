//! CoAP messages as this adapter uses them: typed identifiers, requests and
//! responses, and the one place where datagrams are decoded and encoded
//! through the codec crate ([`coap_lite`]).
//!
//! Decoding is strict where RFC 7252 says "format error" and the codec is
//! lenient: the version must be 1, an Empty message (code 0.00) must be
//! exactly four bytes, reserved code classes are refused, and the size of a
//! datagram is bounded before anything is parsed.

use std::fmt;

use coap_lite::{MessageClass, MessageType as LiteType, Packet, RequestType};

use crate::content_format::ContentFormat;
use crate::error::{Error, Result};

/// Option numbers (RFC 7252 §5.10, RFC 7959 §2.1, RFC 7967).
pub(crate) mod opt {
    pub const URI_HOST: u16 = 3;
    pub const URI_PORT: u16 = 7;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const SIZE1: u16 = 60;
}

/// Largest datagram this crate decodes or sends. A UDP payload can be at
/// most 65 507 bytes over IPv4; CoAP over UDP should stay far below (one
/// datagram per message, RFC 7252 §4.6), so anything larger is refused
/// before parsing.
pub const MAX_DATAGRAM: usize = 65_507;

/// Largest Uri-Path segment (RFC 7252 §5.10: 0–255 bytes).
const MAX_SEGMENT: usize = 255;

/// A message id (RFC 7252 §3): matches an ACK or RST to its CON and lets a
/// receiver drop duplicates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u16);

impl MessageId {
    /// Wraps a 16-bit message id.
    pub const fn new(id: u16) -> Self {
        Self(id)
    }

    /// The 16-bit value.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The next id, wrapping at 2^16.
    pub(crate) const fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({:#06x})", self.0)
    }
}

/// A token (RFC 7252 §5.3.1): 0–8 bytes that match a response to its
/// request across message ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    /// Largest token length.
    pub const MAX_LEN: usize = 8;

    /// The empty token.
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; 8],
    };

    /// An eight-byte token.
    pub const fn from_array(bytes: [u8; 8]) -> Self {
        Self { len: 8, bytes }
    }

    /// A token from 0–8 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX_LEN {
            return Err(Error::Malformed("token longer than 8 bytes"));
        }
        let mut b = [0u8; 8];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            bytes: b,
        })
    }

    /// The token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// A request method (RFC 7252 §5.8, RFC 8132 FETCH).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// GET (0.01): pulls.
    Get,
    /// POST (0.02): key deliveries, acks, group commands.
    Post,
    /// PUT (0.03).
    Put,
    /// DELETE (0.04).
    Delete,
    /// FETCH (0.05): a pull that carries a request body.
    Fetch,
}

impl Method {
    fn code(self) -> u8 {
        match self {
            Self::Get => 1,
            Self::Post => 2,
            Self::Put => 3,
            Self::Delete => 4,
            Self::Fetch => 5,
        }
    }

    fn to_class(self) -> MessageClass {
        MessageClass::from(self.code())
    }

    /// The method of a request packet, if it is one this adapter serves.
    pub(crate) fn of_packet(p: &Packet) -> Option<Self> {
        Self::from_class(p.header.code)
    }

    fn from_class(class: MessageClass) -> Option<Self> {
        match class {
            MessageClass::Request(RequestType::Get) => Some(Self::Get),
            MessageClass::Request(RequestType::Post) => Some(Self::Post),
            MessageClass::Request(RequestType::Put) => Some(Self::Put),
            MessageClass::Request(RequestType::Delete) => Some(Self::Delete),
            MessageClass::Request(RequestType::Fetch) => Some(Self::Fetch),
            _ => None,
        }
    }
}

/// A response code `c.dd` (RFC 7252 §5.9, §12.1.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseCode(u8);

impl ResponseCode {
    /// 2.01 Created.
    pub const CREATED: Self = Self::from_parts(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Self = Self::from_parts(2, 2);
    /// 2.04 Changed.
    pub const CHANGED: Self = Self::from_parts(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Self = Self::from_parts(2, 5);
    /// 2.31 Continue (RFC 7959 §2.9.1).
    pub const CONTINUE: Self = Self::from_parts(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Self = Self::from_parts(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Self = Self::from_parts(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Self = Self::from_parts(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Self = Self::from_parts(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Self = Self::from_parts(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Self = Self::from_parts(4, 5);
    /// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
    pub const REQUEST_ENTITY_INCOMPLETE: Self = Self::from_parts(4, 8);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Self = Self::from_parts(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Self = Self::from_parts(4, 15);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Self = Self::from_parts(5, 0);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self::from_parts(5, 3);

    /// `class.detail`; class must be 2, 4 or 5 and detail below 32.
    pub fn new(class: u8, detail: u8) -> Result<Self> {
        if !matches!(class, 2 | 4 | 5) || detail > 31 {
            return Err(Error::Config(
                "response class must be 2, 4 or 5, detail < 32",
            ));
        }
        Ok(Self::from_parts(class, detail))
    }

    const fn from_parts(class: u8, detail: u8) -> Self {
        Self((class << 5) | detail)
    }

    /// The class (2, 4 or 5).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail (0–31).
    pub const fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// True for 2.xx.
    pub const fn is_success(self) -> bool {
        self.class() == 2
    }

    fn to_class(self) -> MessageClass {
        MessageClass::from(self.0)
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseCode({self})")
    }
}

/// Splits `a/b/c` (a leading `/` is ignored) into Uri-Path segments.
fn split_path(path: &str) -> Result<Vec<String>> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|s| {
            if s.len() > MAX_SEGMENT {
                Err(Error::TooLarge {
                    what: "Uri-Path segment",
                    limit: MAX_SEGMENT,
                })
            } else {
                Ok(s.to_owned())
            }
        })
        .collect()
}

/// A request: method, Uri-Path, optional Uri-Query, Content-Format and body.
///
/// The body is opaque to this crate: sealcast puts a COSE object there and
/// the Content-Format says which kind.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    path: Vec<String>,
    query: Vec<String>,
    content_format: Option<ContentFormat>,
    payload: Vec<u8>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path())
            .field("content_format", &self.content_format)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request for `path` (`a/b/c`; segments of at most 255 bytes).
    pub fn new(method: Method, path: &str) -> Result<Self> {
        Ok(Self {
            method,
            path: split_path(path)?,
            query: Vec::new(),
            content_format: None,
            payload: Vec::new(),
        })
    }

    /// A GET for `path`.
    pub fn get(path: &str) -> Result<Self> {
        Self::new(Method::Get, path)
    }

    /// A POST of `payload` (with its Content-Format) to `path`.
    pub fn post(path: &str, content_format: ContentFormat, payload: Vec<u8>) -> Result<Self> {
        Ok(Self::new(Method::Post, path)?.with_payload(content_format, payload))
    }

    /// Sets the body and its Content-Format.
    #[must_use]
    pub fn with_payload(mut self, content_format: ContentFormat, payload: Vec<u8>) -> Self {
        self.content_format = Some(content_format);
        self.payload = payload;
        self
    }

    /// Adds a Uri-Query option (`key=value`), at most 255 bytes.
    pub fn with_query(mut self, query: &str) -> Result<Self> {
        if query.len() > MAX_SEGMENT {
            return Err(Error::TooLarge {
                what: "Uri-Query",
                limit: MAX_SEGMENT,
            });
        }
        self.query.push(query.to_owned());
        Ok(self)
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The Uri-Path joined with `/`, without a leading `/` (`grp/7/cmd`).
    /// sealcast binds this string into a broadcast as its target.
    pub fn path(&self) -> String {
        self.path.join("/")
    }

    /// The Uri-Path segments.
    pub fn path_segments(&self) -> &[String] {
        &self.path
    }

    /// The Uri-Query options.
    pub fn query(&self) -> &[String] {
        &self.query
    }

    /// The Content-Format option, if present.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.content_format
    }

    /// The body.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the body out.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    pub(crate) fn set_payload(&mut self, payload: Vec<u8>) {
        self.payload = payload;
    }

    /// Reads a request out of a decoded packet (options only; payload
    /// copied). Fails on a non-UTF-8 path or a malformed Content-Format.
    pub(crate) fn from_packet(p: &Packet) -> Result<Self> {
        let method = Method::from_class(p.header.code)
            .ok_or(Error::Malformed("not a request code this adapter serves"))?;
        Ok(Self {
            method,
            path: string_options(p, opt::URI_PATH)?,
            query: string_options(p, opt::URI_QUERY)?,
            content_format: content_format_of(p)?,
            payload: p.payload.clone(),
        })
    }

    /// Writes method, options and (unless `without_payload`) the body into
    /// a packet with the given type, id and token.
    pub(crate) fn to_packet(
        &self,
        kind: MessageType,
        mid: MessageId,
        token: Token,
        payload: &[u8],
    ) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind.to_lite());
        p.header.code = self.method.to_class();
        p.header.message_id = mid.get();
        p.set_token(token.as_bytes().to_vec());
        for s in &self.path {
            p.add_option(opt::URI_PATH.into(), s.as_bytes().to_vec());
        }
        if let Some(cf) = self.content_format {
            p.add_option(
                opt::CONTENT_FORMAT.into(),
                encode_uint(u32::from(cf.number())),
            );
        }
        for q in &self.query {
            p.add_option(opt::URI_QUERY.into(), q.as_bytes().to_vec());
        }
        p.payload = payload.to_vec();
        p
    }
}

/// A response: code, optional Content-Format and body.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    code: ResponseCode,
    content_format: Option<ContentFormat>,
    payload: Vec<u8>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("code", &self.code)
            .field("content_format", &self.content_format)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Response {
    /// A response with `code` and no body.
    pub fn new(code: ResponseCode) -> Self {
        Self {
            code,
            content_format: None,
            payload: Vec::new(),
        }
    }

    /// 2.05 Content with a body.
    pub fn content(content_format: ContentFormat, payload: Vec<u8>) -> Self {
        Self::new(ResponseCode::CONTENT).with_payload(content_format, payload)
    }

    /// 2.04 Changed without a body.
    pub fn changed() -> Self {
        Self::new(ResponseCode::CHANGED)
    }

    /// Sets the body and its Content-Format.
    #[must_use]
    pub fn with_payload(mut self, content_format: ContentFormat, payload: Vec<u8>) -> Self {
        self.content_format = Some(content_format);
        self.payload = payload;
        self
    }

    /// The code.
    pub fn code(&self) -> ResponseCode {
        self.code
    }

    /// The Content-Format option, if present.
    pub fn content_format(&self) -> Option<ContentFormat> {
        self.content_format
    }

    /// The body.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the body out.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    pub(crate) fn set_payload(&mut self, payload: Vec<u8>) {
        self.payload = payload;
    }

    /// Reads a response out of a decoded packet.
    pub(crate) fn from_packet(p: &Packet) -> Result<Self> {
        let code = match p.header.code {
            MessageClass::Response(_) => ResponseCode(u8::from(p.header.code)),
            _ => return Err(Error::Malformed("not a response code")),
        };
        Ok(Self {
            code,
            content_format: content_format_of(p)?,
            payload: p.payload.clone(),
        })
    }

    /// Writes code, Content-Format and `payload` into a packet.
    pub(crate) fn to_packet(
        &self,
        kind: MessageType,
        mid: MessageId,
        token: &[u8],
        payload: &[u8],
    ) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind.to_lite());
        p.header.code = self.code.to_class();
        p.header.message_id = mid.get();
        p.set_token(token.to_vec());
        if let Some(cf) = self.content_format {
            p.add_option(
                opt::CONTENT_FORMAT.into(),
                encode_uint(u32::from(cf.number())),
            );
        }
        p.payload = payload.to_vec();
        p
    }
}

/// The four message types (RFC 7252 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// CON: acknowledged, retransmitted until then.
    Confirmable,
    /// NON: fire and forget; multicast requests are always NON.
    NonConfirmable,
    /// ACK.
    Acknowledgement,
    /// RST.
    Reset,
}

impl MessageType {
    fn to_lite(self) -> LiteType {
        match self {
            Self::Confirmable => LiteType::Confirmable,
            Self::NonConfirmable => LiteType::NonConfirmable,
            Self::Acknowledgement => LiteType::Acknowledgement,
            Self::Reset => LiteType::Reset,
        }
    }

    pub(crate) fn of(p: &Packet) -> Self {
        match p.header.get_type() {
            LiteType::Confirmable => Self::Confirmable,
            LiteType::NonConfirmable => Self::NonConfirmable,
            LiteType::Acknowledgement => Self::Acknowledgement,
            LiteType::Reset => Self::Reset,
        }
    }
}

/// What a decoded message is, by its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeKind {
    Empty,
    Request,
    Response,
}

pub(crate) fn code_kind(p: &Packet) -> CodeKind {
    match p.header.code {
        MessageClass::Empty => CodeKind::Empty,
        MessageClass::Request(_) => CodeKind::Request,
        _ => CodeKind::Response,
    }
}

/// The first four bytes of a datagram, read without trusting the rest:
/// enough to answer a confirmable message we cannot parse with a Reset
/// (RFC 7252 §4.2).
pub(crate) fn peek_header(bytes: &[u8]) -> Option<(MessageType, MessageId)> {
    let [b0, _, m0, m1, ..] = *bytes else {
        return None;
    };
    if b0 >> 6 != 1 {
        return None;
    }
    let kind = match (b0 >> 4) & 0x3 {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    };
    Some((kind, MessageId(u16::from_be_bytes([m0, m1]))))
}

/// Decodes one datagram, bounded and strict (see the module docs).
pub(crate) fn decode(bytes: &[u8]) -> Result<Packet> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(Error::TooLarge {
            what: "datagram",
            limit: MAX_DATAGRAM,
        });
    }
    if bytes.len() < 4 {
        return Err(Error::Malformed("shorter than the 4-byte header"));
    }
    if bytes[0] >> 6 != 1 {
        return Err(Error::Malformed("version is not 1"));
    }
    if bytes[0] & 0x0f > 8 {
        return Err(Error::Malformed("token length 9-15 is reserved"));
    }
    let p =
        Packet::from_bytes(bytes).map_err(|_| Error::Malformed("codec rejected the message"))?;
    match p.header.code {
        MessageClass::Empty if bytes.len() != 4 => {
            return Err(Error::Malformed(
                "an Empty message has bytes after the header",
            ));
        }
        MessageClass::Reserved(_) => return Err(Error::Malformed("reserved code class")),
        _ => {}
    }
    Ok(p)
}

/// Encodes a packet, refusing to produce a datagram above `limit`.
pub(crate) fn encode(p: &Packet, limit: usize) -> Result<Vec<u8>> {
    p.to_bytes_with_limit(limit.min(MAX_DATAGRAM))
        .map_err(|_| Error::TooLarge {
            what: "encoded CoAP message",
            limit,
        })
}

/// An Empty message (ACK or RST) for `mid`.
pub(crate) fn empty(kind: MessageType, mid: MessageId) -> Vec<u8> {
    let t: u8 = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [m0, m1] = mid.get().to_be_bytes();
    vec![0x40 | (t << 4), 0x00, m0, m1]
}

/// Minimal big-endian encoding of a uint option value (RFC 7252 §3.2).
pub(crate) fn encode_uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// Decodes a uint option value of at most `max_len` bytes.
pub(crate) fn decode_uint(v: &[u8], max_len: usize) -> Result<u32> {
    if v.len() > max_len || v.len() > 4 {
        return Err(Error::Malformed("uint option value too long"));
    }
    Ok(v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// The single value of option `number`, if present; more than one value of
/// a non-repeatable option is a format error.
pub(crate) fn single_option(p: &Packet, number: u16) -> Result<Option<&[u8]>> {
    match p.get_option(number.into()) {
        None => Ok(None),
        Some(list) => {
            let mut it = list.iter();
            match (it.next(), it.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => Ok(Some(v.as_slice())),
                (Some(_), Some(_)) => Err(Error::Malformed("non-repeatable option repeated")),
            }
        }
    }
}

fn content_format_of(p: &Packet) -> Result<Option<ContentFormat>> {
    single_option(p, opt::CONTENT_FORMAT)?
        .map(|v| decode_uint(v, 2).map(|n| ContentFormat::new(n as u16)))
        .transpose()
}

fn string_options(p: &Packet, number: u16) -> Result<Vec<String>> {
    let Some(list) = p.get_option(number.into()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|v| {
            if v.len() > MAX_SEGMENT {
                return Err(Error::Malformed("string option longer than 255 bytes"));
            }
            String::from_utf8(v.clone()).map_err(|_| Error::Malformed("string option is not UTF-8"))
        })
        .collect()
}

/// The first critical option (odd number, RFC 7252 §5.4.1) in `p` that is
/// not among `understood`.
pub(crate) fn unknown_critical_option(p: &Packet, understood: &[u16]) -> Option<u16> {
    p.options()
        .filter(|(_, values)| !values.is_empty())
        .map(|(n, _)| *n)
        .find(|n| n % 2 == 1 && !understood.contains(n))
}

/// Options a request to this server may carry: processed or safely ignored
/// (Uri-Host and Uri-Port name this one endpoint; Accept is honoured by the
/// handler or ignored). If-Match (1) is deliberately not here: a request
/// conditional on an ETag this server does not keep must fail.
pub(crate) const REQUEST_OPTIONS_UNDERSTOOD: &[u16] = &[
    opt::URI_HOST,
    opt::URI_PORT,
    opt::URI_PATH,
    opt::URI_QUERY,
    opt::ACCEPT,
    opt::BLOCK2,
    opt::BLOCK1,
];

/// Critical options a response to this client may carry.
pub(crate) const RESPONSE_OPTIONS_UNDERSTOOD: &[u16] = &[opt::BLOCK2, opt::BLOCK1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_codec() {
        let req = Request::post(
            "/kd/device-x",
            ContentFormat::COSE_SIGN1,
            vec![0xd2, 0x84, 1, 2, 3],
        )
        .unwrap()
        .with_query("epoch=7")
        .unwrap();
        let token = Token::new(&[1, 2, 3, 4]).unwrap();
        let p = req.to_packet(
            MessageType::Confirmable,
            MessageId::new(0x1234),
            token,
            req.payload(),
        );
        let bytes = encode(&p, 1152).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(MessageType::of(&back), MessageType::Confirmable);
        assert_eq!(back.header.message_id, 0x1234);
        assert_eq!(back.get_token(), &[1, 2, 3, 4]);
        let r = Request::from_packet(&back).unwrap();
        assert_eq!(r, req);
        assert_eq!(r.path(), "kd/device-x");
    }

    #[test]
    fn strict_decoding() {
        // Version 2.
        assert!(decode(&[0x80, 0x01, 0, 1]).is_err());
        // Empty message with a trailing byte.
        assert!(decode(&[0x40, 0x00, 0, 1, 0xff]).is_err());
        // Reserved class 1 (code 0x20).
        assert!(decode(&[0x40, 0x20, 0, 1]).is_err());
        // TKL 9.
        assert!(decode(&[0x49, 0x01, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // Truncated header.
        assert!(decode(&[0x40, 0x01, 0]).is_err());
        // A CoAP ping decodes.
        assert!(decode(&[0x40, 0x00, 0, 1]).is_ok());
    }

    #[test]
    fn uint_options() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(16), vec![16]);
        assert_eq!(encode_uint(0x1_0000), vec![1, 0, 0]);
        assert_eq!(decode_uint(&[1, 0, 0], 3).unwrap(), 0x1_0000);
        assert!(decode_uint(&[1, 0, 0], 2).is_err());
    }

    #[test]
    fn response_codes() {
        assert_eq!(ResponseCode::CONTENT.to_string(), "2.05");
        assert_eq!(ResponseCode::CONTINUE.to_string(), "2.31");
        assert_eq!(ResponseCode::REQUEST_ENTITY_TOO_LARGE.to_string(), "4.13");
        assert!(ResponseCode::new(3, 0).is_err());
    }
}

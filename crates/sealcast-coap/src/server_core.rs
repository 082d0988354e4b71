//! The server side without I/O: one datagram in, at most one datagram out.
//!
//! [`ServerCore::handle_datagram`] takes the bytes, the peer and `now`, and
//! returns the reply to send, if any. It implements
//!
//! - message-level rules of RFC 7252 §4: piggybacked ACK for a confirmable
//!   request, a non-confirmable response to a non-confirmable one, Reset for
//!   a CoAP ping and for confirmable messages it cannot process;
//! - deduplication (§4.5): the reply to each (peer, message id) is kept for
//!   EXCHANGE_LIFETIME (NON: NON_LIFETIME) in a cache bounded in size, so a
//!   retransmitted request gets the same reply and the handler runs once;
//! - critical options it does not understand answer 4.02 (§5.4.1);
//! - RFC 7959 block-wise transfer: Block1 requests are reassembled (bounded
//!   body size, bounded number of concurrent transfers) before the handler
//!   sees them; a response larger than one block is sent as Block2 blocks
//!   from a cache, so the handler is not run again for later blocks.
//!
//! The handler never sees a partial body and never a duplicate. What the
//! peer learns on failure is a bare response code, never a diagnostic
//! payload.
//!
//! A [`DeferHandler`] may keep a request and answer it later: the core then
//! sends nothing, drops the peer's retransmissions while the request is
//! open, and [`ServerCore::complete`] encodes the answer (a piggybacked ACK
//! sent late, RFC 7252 §5.2.1) and remembers it for later duplicates. A
//! server whose runtime answers only after it processed a request — after
//! a batch was forwarded, a replay window saved — thus never blocks on it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::Packet;

use crate::block::{BlockOpt, BlockSize};
use crate::error::Result;
use crate::expiring::ExpiringMap;
use crate::message::{
    self, CodeKind, MAX_DATAGRAM, MessageId, MessageType, Method, REQUEST_OPTIONS_UNDERSTOOD,
    Request, Response, ResponseCode, opt,
};
use crate::params::TransmissionParams;

/// Serves requests: called once per complete, deduplicated request.
///
/// Closures `Fn(&Request, SocketAddr) -> Response` implement it.
pub trait Handler: Send + Sync + 'static {
    /// The response to `request` from `peer`.
    fn handle(&self, request: &Request, peer: SocketAddr) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request, SocketAddr) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request, peer: SocketAddr) -> Response {
        self(request, peer)
    }
}

/// Serves requests, answering some of them later: called once per
/// complete, deduplicated request.
pub trait DeferHandler: Send + Sync + 'static {
    /// The response to `request` from `peer` now, or `None` to answer it
    /// later by [`ServerCore::complete`] with `ticket`.
    fn handle(&self, request: &Request, peer: SocketAddr, ticket: Ticket) -> Option<Response>;
}

/// A request answered later: what [`ServerCore::complete`] needs to build
/// the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    peer: SocketAddr,
    mid: MessageId,
    kind: MessageType,
    token: Vec<u8>,
    block1: Option<BlockOpt>,
}

impl Ticket {
    /// The peer that sent the request.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// The handler of one datagram: answering at once, or maybe later.
#[derive(Clone, Copy)]
enum Serve<'a> {
    Now(&'a dyn Handler),
    Later(&'a dyn DeferHandler),
}

/// Limits and timing of a server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerSettings {
    /// RFC 7252 §4.8 parameters (they set the deduplication lifetime).
    pub params: TransmissionParams,
    /// Largest block this server sends (Block2); default 1024.
    pub block_size: BlockSize,
    /// Largest request or response body, in bytes, reassembled or cached
    /// for block-wise transfer; default 256 KiB.
    pub max_body: usize,
    /// Most (peer, message id) pairs remembered; default 4096.
    pub dedup_capacity: usize,
    /// Most block-wise transfers in progress at once, each way; default 64.
    pub transfer_capacity: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            params: TransmissionParams::default(),
            block_size: BlockSize::B1024,
            max_body: 256 * 1024,
            dedup_capacity: 4096,
            transfer_capacity: 64,
        }
    }
}

/// Counters of a server, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Complete requests passed to the handler.
    pub requests: u64,
    /// Duplicates answered from the deduplication cache (CON) or dropped
    /// (NON) without running the handler.
    pub duplicates: u64,
    /// Datagrams that failed to decode.
    pub malformed: u64,
    /// Resets sent (pings, unparseable or unexpected confirmable messages).
    pub resets: u64,
    /// Block1 blocks accepted.
    pub blocks_received: u64,
    /// Block2 blocks sent after the first.
    pub blocks_served: u64,
    /// Deduplication entries evicted for room before they expired.
    pub dedup_evictions: u64,
}

/// Which block-wise transfer a request belongs to (RFC 7959 §2.4: the
/// endpoint and the request's options other than Block1/Block2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TransferKey {
    peer: SocketAddr,
    method: Method,
    path: Vec<String>,
    query: Vec<String>,
}

#[derive(Debug)]
struct Upload {
    body: Vec<u8>,
}

#[derive(Debug)]
struct CachedResponse {
    response: Response,
}

/// A reply before encoding.
struct Reply {
    response: Response,
    options: Vec<(u16, Vec<u8>)>,
}

impl Reply {
    fn code(code: ResponseCode) -> Self {
        Self {
            response: Response::new(code),
            options: Vec::new(),
        }
    }
}

/// See the module docs.
pub struct ServerCore {
    settings: ServerSettings,
    dedup: ExpiringMap<(SocketAddr, MessageId), Option<Vec<u8>>>,
    uploads: ExpiringMap<TransferKey, Upload>,
    downloads: ExpiringMap<TransferKey, CachedResponse>,
    next_mid: MessageId,
    stats: ServerStats,
}

impl fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCore")
            .field("settings", &self.settings)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ServerCore {
    /// A server core; `first_mid` seeds the ids of its non-confirmable
    /// responses (pick it at random, RFC 7252 §4.4).
    pub fn new(settings: ServerSettings, first_mid: MessageId) -> Self {
        Self {
            dedup: ExpiringMap::new(settings.dedup_capacity),
            uploads: ExpiringMap::new(settings.transfer_capacity),
            downloads: ExpiringMap::new(settings.transfer_capacity),
            next_mid: first_mid,
            stats: ServerStats::default(),
            settings,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            dedup_evictions: self.dedup.evicted(),
            ..self.stats
        }
    }

    /// Processes one datagram from `peer` received at `now`; returns the
    /// datagram to send back to `peer`, if any. Never panics, whatever the
    /// bytes.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
        handler: &dyn Handler,
    ) -> Option<Vec<u8>> {
        self.serve(datagram, peer, now, Serve::Now(handler))
    }

    /// As [`ServerCore::handle_datagram`], with a handler that may answer
    /// later: then nothing is sent now, retransmissions of the request are
    /// dropped until [`ServerCore::complete`] answers it.
    pub fn handle_datagram_deferred(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
        handler: &dyn DeferHandler,
    ) -> Option<Vec<u8>> {
        self.serve(datagram, peer, now, Serve::Later(handler))
    }

    /// The reply to a request a [`DeferHandler`] kept: the datagram to send
    /// to [`Ticket::peer`], remembered for the request's duplicates (a
    /// confirmable request). A response body larger than one block is not
    /// sent block-wise here: it is answered 5.00.
    pub fn complete(&mut self, ticket: Ticket, response: Response, now: Instant) -> Vec<u8> {
        let mut reply = Reply {
            response,
            options: Vec::new(),
        };
        if reply.response.payload().len() > self.settings.block_size.bytes() {
            reply = Reply::code(ResponseCode::INTERNAL_SERVER_ERROR);
        }
        if let Some(b1) = ticket.block1
            && let Ok(last) = BlockOpt::new(b1.num, false, b1.size)
        {
            reply.options.push((opt::BLOCK1, last.encode()));
        }
        let (bytes, remembered, lifetime) =
            self.encode_for(&reply, ticket.kind, ticket.mid, &ticket.token);
        self.dedup
            .insert((ticket.peer, ticket.mid), remembered, now + lifetime, now);
        bytes
    }

    /// Encodes `reply` to a request of `kind` with `mid`: the bytes, what
    /// the deduplication cache keeps, and for how long.
    fn encode_for(
        &mut self,
        reply: &Reply,
        kind: MessageType,
        mid: MessageId,
        token: &[u8],
    ) -> (Vec<u8>, Option<Vec<u8>>, std::time::Duration) {
        let (reply_kind, reply_mid, lifetime) = if kind == MessageType::Confirmable {
            (
                MessageType::Acknowledgement,
                mid,
                self.settings.params.exchange_lifetime(),
            )
        } else {
            let m = self.next_mid;
            self.next_mid = m.next();
            (
                MessageType::NonConfirmable,
                m,
                self.settings.params.non_lifetime(),
            )
        };
        let bytes = encode_reply(reply, reply_kind, reply_mid, token);
        // Duplicates of a NON request are dropped (§4.5), not answered.
        let remembered = (kind == MessageType::Confirmable).then(|| bytes.clone());
        (bytes, remembered, lifetime)
    }

    fn serve(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
        handler: Serve<'_>,
    ) -> Option<Vec<u8>> {
        let packet = match message::decode(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                // A confirmable message we cannot parse is rejected (§4.2);
                // anything else is dropped silently.
                return match message::peek_header(datagram) {
                    Some((MessageType::Confirmable, mid)) => self.reset(mid),
                    _ => None,
                };
            }
        };
        let kind = MessageType::of(&packet);
        let mid = MessageId::new(packet.header.message_id);
        match (kind, message::code_kind(&packet)) {
            (MessageType::Acknowledgement | MessageType::Reset, _) => return None,
            // A ping, or a response to a request this server never made.
            (MessageType::Confirmable, CodeKind::Empty | CodeKind::Response) => {
                return self.reset(mid);
            }
            (MessageType::NonConfirmable, CodeKind::Empty | CodeKind::Response) => return None,
            (_, CodeKind::Request) => {}
        }

        let key = (peer, mid);
        if let Some(cached) = self.dedup.get(&key, now) {
            self.stats.duplicates += 1;
            return cached.clone();
        }

        let ticket = Ticket {
            peer,
            mid,
            kind,
            token: packet.get_token().to_vec(),
            block1: None,
        };
        let Some(reply) = self.process_request(&packet, ticket, now, handler) else {
            // Kept for later: duplicates are dropped until it is answered
            // (the entry is replaced by the answer then).
            let lifetime = self.settings.params.exchange_lifetime();
            self.dedup.insert(key, None, now + lifetime, now);
            return None;
        };
        let (bytes, remembered, lifetime) = self.encode_for(&reply, kind, mid, packet.get_token());
        self.dedup.insert(key, remembered, now + lifetime, now);
        Some(bytes)
    }

    fn reset(&mut self, mid: MessageId) -> Option<Vec<u8>> {
        self.stats.resets += 1;
        Some(message::empty(MessageType::Reset, mid))
    }

    /// The reply, or `None` when the handler keeps the request.
    fn process_request(
        &mut self,
        p: &Packet,
        ticket: Ticket,
        now: Instant,
        handler: Serve<'_>,
    ) -> Option<Reply> {
        match self.try_process(p, ticket, now, handler) {
            Ok(reply) => reply,
            Err(code) => Some(Reply::code(code)),
        }
    }

    fn try_process(
        &mut self,
        p: &Packet,
        mut ticket: Ticket,
        now: Instant,
        handler: Serve<'_>,
    ) -> std::result::Result<Option<Reply>, ResponseCode> {
        let peer = ticket.peer;
        if message::unknown_critical_option(p, REQUEST_OPTIONS_UNDERSTOOD).is_some() {
            return Err(ResponseCode::BAD_OPTION);
        }
        if Method::of_packet(p).is_none() {
            return Err(ResponseCode::METHOD_NOT_ALLOWED);
        }
        let mut request = Request::from_packet(p).map_err(|_| ResponseCode::BAD_REQUEST)?;
        let block1 = block_option(p, opt::BLOCK1).map_err(|_| ResponseCode::BAD_OPTION)?;
        let block2 = block_option(p, opt::BLOCK2).map_err(|_| ResponseCode::BAD_OPTION)?;
        let size1 = message::single_option(p, opt::SIZE1)
            .and_then(|v| v.map(|v| message::decode_uint(v, 4)).transpose())
            .map_err(|_| ResponseCode::BAD_OPTION)?;
        let key = TransferKey {
            peer,
            method: request.method(),
            path: request.path_segments().to_vec(),
            query: request.query().to_vec(),
        };
        let lifetime = self.settings.params.exchange_lifetime();

        // A later block of a response already produced.
        if let (Some(b2), None) = (block2, block1)
            && b2.num > 0
        {
            return self.serve_cached_block(&key, b2, now).map(Some);
        }

        if size1.is_some_and(|s| s as usize > self.settings.max_body) {
            return Ok(Some(self.too_large()));
        }

        if let Some(b1) = block1 {
            let payload = request.payload();
            let block_len = b1.size.bytes();
            if (b1.more && payload.len() != block_len) || payload.len() > block_len {
                return Err(ResponseCode::BAD_REQUEST);
            }
            if b1.num == 0 {
                self.uploads.insert(
                    key.clone(),
                    Upload { body: Vec::new() },
                    now + lifetime,
                    now,
                );
            }
            let max_body = self.settings.max_body;
            let Some(upload) = self.uploads.get_mut(&key, now) else {
                return Err(ResponseCode::REQUEST_ENTITY_INCOMPLETE);
            };
            if b1.offset() != upload.body.len() {
                self.uploads.remove(&key);
                return Err(ResponseCode::REQUEST_ENTITY_INCOMPLETE);
            }
            if upload.body.len() + payload.len() > max_body {
                self.uploads.remove(&key);
                return Ok(Some(self.too_large()));
            }
            upload.body.extend_from_slice(payload);
            self.stats.blocks_received += 1;
            if b1.more {
                // Echo the block; a smaller SZX asks the client to use our
                // block size from now on (RFC 7959 §2.3).
                let ours = b1.size.min(self.settings.block_size);
                let echo =
                    BlockOpt::new(b1.num, true, ours).map_err(|_| ResponseCode::BAD_OPTION)?;
                let mut reply = Reply::code(ResponseCode::CONTINUE);
                reply.options.push((opt::BLOCK1, echo.encode()));
                return Ok(Some(reply));
            }
            let body = self
                .uploads
                .remove(&key)
                .map(|u| u.body)
                .unwrap_or_default();
            request.set_payload(body);
        }

        self.stats.requests += 1;
        let response = match handler {
            Serve::Now(h) => h.handle(&request, peer),
            Serve::Later(h) => {
                ticket.block1 = block1;
                match h.handle(&request, peer, ticket) {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };

        let mut reply = Reply {
            response,
            options: Vec::new(),
        };
        if let Some(b1) = block1 {
            let last =
                BlockOpt::new(b1.num, false, b1.size).map_err(|_| ResponseCode::BAD_OPTION)?;
            reply.options.push((opt::BLOCK1, last.encode()));
        }
        // Early negotiation: a Block2 with NUM 0 in the request names the
        // largest block the client wants.
        let size = block2
            .map(|b| b.size.min(self.settings.block_size))
            .unwrap_or(self.settings.block_size);
        let body_len = reply.response.payload().len();
        if body_len > size.bytes() {
            if body_len > self.settings.max_body {
                return Err(ResponseCode::INTERNAL_SERVER_ERROR);
            }
            let first = reply.response.payload()[..size.bytes()].to_vec();
            let b2 =
                BlockOpt::new(0, true, size).map_err(|_| ResponseCode::INTERNAL_SERVER_ERROR)?;
            reply.options.push((opt::BLOCK2, b2.encode()));
            reply
                .options
                .push((opt::SIZE2, message::encode_uint(body_len as u32)));
            let full = std::mem::replace(&mut reply.response, Response::new(ResponseCode::CONTENT));
            let mut head = full.clone();
            head.set_payload(first);
            reply.response = head;
            self.downloads
                .insert(key, CachedResponse { response: full }, now + lifetime, now);
        }
        Ok(Some(reply))
    }

    fn serve_cached_block(
        &mut self,
        key: &TransferKey,
        b2: BlockOpt,
        now: Instant,
    ) -> std::result::Result<Reply, ResponseCode> {
        let now_size = b2.size.min(self.settings.block_size);
        // NUM counts blocks of the size the client asked for; keep the
        // offset when serving a smaller size.
        let offset = b2.offset();
        if !offset.is_multiple_of(now_size.bytes()) {
            return Err(ResponseCode::BAD_OPTION);
        }
        let num = u32::try_from(offset / now_size.bytes()).map_err(|_| ResponseCode::BAD_OPTION)?;
        let Some(cached) = self.downloads.get(key, now) else {
            return Err(ResponseCode::REQUEST_ENTITY_INCOMPLETE);
        };
        let full = &cached.response;
        let Some((chunk, more)) = BlockOpt::slice(full.payload(), num, now_size) else {
            return Err(ResponseCode::BAD_OPTION);
        };
        let mut head = full.clone();
        head.set_payload(chunk.to_vec());
        let opt_value = BlockOpt::new(num, more, now_size).map_err(|_| ResponseCode::BAD_OPTION)?;
        let mut reply = Reply {
            response: head,
            options: vec![(opt::BLOCK2, opt_value.encode())],
        };
        if num == 0 {
            reply.options.push((
                opt::SIZE2,
                message::encode_uint(full.payload().len() as u32),
            ));
        }
        self.stats.blocks_served += 1;
        if !more {
            self.downloads.remove(key);
        }
        Ok(reply)
    }

    fn too_large(&self) -> Reply {
        let mut reply = Reply::code(ResponseCode::REQUEST_ENTITY_TOO_LARGE);
        let limit = u32::try_from(self.settings.max_body).unwrap_or(u32::MAX);
        reply
            .options
            .push((opt::SIZE1, message::encode_uint(limit)));
        reply
    }
}

fn block_option(p: &Packet, number: u16) -> Result<Option<BlockOpt>> {
    message::single_option(p, number)?
        .map(BlockOpt::decode)
        .transpose()
}

fn encode_reply(reply: &Reply, kind: MessageType, mid: MessageId, token: &[u8]) -> Vec<u8> {
    let mut packet = reply
        .response
        .to_packet(kind, mid, token, reply.response.payload());
    for (number, value) in &reply.options {
        packet.add_option((*number).into(), value.clone());
    }
    match message::encode(&packet, MAX_DATAGRAM) {
        Ok(bytes) => bytes,
        Err(_) => {
            let fallback = Response::new(ResponseCode::INTERNAL_SERVER_ERROR);
            let p = fallback.to_packet(kind, mid, token, &[]);
            message::encode(&p, MAX_DATAGRAM).unwrap_or_else(|_| message::empty(kind, mid))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn con_get(mid: u16) -> Vec<u8> {
        let [m0, m1] = mid.to_be_bytes();
        vec![0x41, 0x01, m0, m1, 0x7a, 0xb1, b'x']
    }

    fn counting() -> (impl Handler, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = move |_: &Request, _: SocketAddr| {
            c.fetch_add(1, Ordering::SeqCst);
            Response::changed()
        };
        (h, calls)
    }

    #[test]
    fn duplicates_within_the_exchange_lifetime_are_answered_from_the_cache() {
        let settings = ServerSettings::default();
        let lifetime = settings.params.exchange_lifetime();
        let mut core = ServerCore::new(settings, MessageId::new(0));
        let (h, calls) = counting();
        let peer: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let t0 = Instant::now();
        let first = core.handle_datagram(&con_get(9), peer, t0, &h);
        let again = core.handle_datagram(&con_get(9), peer, t0 + Duration::from_secs(60), &h);
        assert_eq!(first, again);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(core.stats().duplicates, 1);
        // The same id from another endpoint is another message.
        let other: SocketAddr = "192.0.2.2:5683".parse().unwrap();
        core.handle_datagram(&con_get(9), other, t0, &h);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // After EXCHANGE_LIFETIME the id may be reused by the peer.
        core.handle_datagram(
            &con_get(9),
            peer,
            t0 + lifetime + Duration::from_millis(1),
            &h,
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_cache_is_bounded() {
        let settings = ServerSettings {
            dedup_capacity: 2,
            ..ServerSettings::default()
        };
        let mut core = ServerCore::new(settings, MessageId::new(0));
        let (h, calls) = counting();
        let peer: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let t0 = Instant::now();
        for mid in [1, 2, 3, 1] {
            core.handle_datagram(&con_get(mid), peer, t0, &h);
        }
        // Id 1 was evicted to make room for 3, so it ran twice.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(core.stats().dedup_evictions >= 1);
    }

    #[test]
    fn a_deferred_request_is_answered_once_later_and_its_duplicates_wait() {
        use std::sync::Mutex;
        struct Keep(Mutex<Vec<Ticket>>);
        impl DeferHandler for Keep {
            fn handle(&self, _: &Request, _: SocketAddr, ticket: Ticket) -> Option<Response> {
                self.0.lock().unwrap().push(ticket);
                None
            }
        }
        let keep = Keep(Mutex::new(Vec::new()));
        let mut core = ServerCore::new(ServerSettings::default(), MessageId::new(0));
        let peer: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let t0 = Instant::now();
        // Nothing is sent while the request is open, retransmissions
        // included, and the handler runs once.
        assert_eq!(
            core.handle_datagram_deferred(&con_get(7), peer, t0, &keep),
            None
        );
        assert_eq!(
            core.handle_datagram_deferred(&con_get(7), peer, t0, &keep),
            None
        );
        assert_eq!(core.stats().duplicates, 1);
        // Another request is served meanwhile.
        assert_eq!(
            core.handle_datagram_deferred(&con_get(8), peer, t0, &keep),
            None
        );
        let tickets = std::mem::take(&mut *keep.0.lock().unwrap());
        assert_eq!(tickets.len(), 2);
        let mut answers = Vec::new();
        for t in tickets {
            assert_eq!(t.peer(), peer);
            answers.push(core.complete(t, Response::changed(), t0));
        }
        // A piggybacked ACK with the request's id and token, 2.04.
        let ack = message::decode(&answers[0]).unwrap();
        assert_eq!(MessageType::of(&ack), MessageType::Acknowledgement);
        assert_eq!(ack.header.message_id, 7);
        assert_eq!(ack.get_token(), &[0x7a][..]);
        assert_eq!(
            ack.header.code,
            coap_lite::MessageClass::Response(coap_lite::ResponseType::Changed)
        );
        // A later duplicate gets the same answer from the cache.
        let (h, calls) = counting();
        assert_eq!(
            core.handle_datagram(&con_get(7), peer, t0, &h),
            Some(answers[0].clone())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}

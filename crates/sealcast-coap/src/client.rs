//! The unicast client: confirmable requests with retransmission and
//! block-wise transfer, one exchange at a time (NSTART = 1, RFC 7252 §4.7).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::Packet;
use rand_core::{CryptoRng, Rng};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};

use crate::block::{BlockOpt, BlockSize};
use crate::error::{Error, Result};
use crate::fault::{self, Direction, Fault};
use crate::message::{
    self, CodeKind, MAX_DATAGRAM, MessageId, MessageType, RESPONSE_OPTIONS_UNDERSTOOD, Request,
    Response, ResponseCode, Token, opt,
};
use crate::params::TransmissionParams;
use crate::socket;

/// How a client binds and behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    bind: SocketAddr,
    params: TransmissionParams,
    block_size: BlockSize,
    max_body: usize,
    separate_response_timeout: Option<Duration>,
    fault: Fault,
}

impl ClientConfig {
    /// A client bound to `bind` (typically port 0) with RFC 7252 timing,
    /// 1024-byte blocks and bodies of at most 256 KiB.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            params: TransmissionParams::default(),
            block_size: BlockSize::B1024,
            max_body: 256 * 1024,
            separate_response_timeout: None,
            fault: None,
        }
    }

    /// Replaces the transmission parameters.
    #[must_use]
    pub fn with_params(mut self, params: TransmissionParams) -> Self {
        self.params = params;
        self
    }

    /// The largest block sent (Block1) and asked for (Block2).
    #[must_use]
    pub fn with_block_size(mut self, size: BlockSize) -> Self {
        self.block_size = size;
        self
    }

    /// The largest response body accepted.
    #[must_use]
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long to wait for a separate response after an empty ACK;
    /// default MAX_TRANSMIT_WAIT.
    #[must_use]
    pub fn with_separate_response_timeout(mut self, timeout: Duration) -> Self {
        self.separate_response_timeout = Some(timeout);
        self
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Installs a fault-injection filter (tests).
    #[must_use]
    pub fn with_fault_injection(
        mut self,
        filter: std::sync::Arc<dyn crate::fault::DatagramFilter>,
    ) -> Self {
        self.fault = Some(filter);
        self
    }
}

/// Counters of a client, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Confirmable messages sent for the first time.
    pub messages: u64,
    /// Retransmissions after a timeout.
    pub retransmissions: u64,
    /// Exchanges given up after MAX_RETRANSMIT.
    pub timeouts: u64,
    /// Block1 blocks sent.
    pub blocks_sent: u64,
    /// Block2 blocks received.
    pub blocks_received: u64,
}

struct ClientState {
    rng: Box<dyn CryptoRng + Send>,
    next_mid: MessageId,
    stats: ClientStats,
    buf: Vec<u8>,
}

impl ClientState {
    fn fresh_token(&mut self) -> Token {
        let mut t = [0u8; 8];
        self.rng.fill_bytes(&mut t);
        Token::from_array(t)
    }

    fn fresh_mid(&mut self) -> MessageId {
        let m = self.next_mid;
        self.next_mid = m.next();
        m
    }

    fn unit(&mut self) -> f64 {
        f64::from(self.rng.next_u32()) / 4_294_967_296.0
    }
}

/// A CoAP client endpoint. Requests through one client are serialised:
/// RFC 7252 §4.7 allows one outstanding interaction per server by default.
pub struct CoapClient {
    socket: tokio::net::UdpSocket,
    config: ClientConfig,
    state: Mutex<ClientState>,
}

impl fmt::Debug for CoapClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoapClient")
            .field("local_addr", &self.socket.local_addr().ok())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CoapClient {
    /// Binds a client; tokens, message ids and retransmission jitter come
    /// from the operating system's random source.
    pub async fn bind(config: ClientConfig) -> Result<Self> {
        Self::bind_with_rng(config, rand_core::UnwrapErr(getrandom::SysRng)).await
    }

    /// Binds a client drawing tokens, message ids and jitter from `rng`
    /// (tests pass a seeded generator for reproducible runs).
    pub async fn bind_with_rng(
        config: ClientConfig,
        mut rng: impl CryptoRng + Send + 'static,
    ) -> Result<Self> {
        let socket = socket::unicast(config.bind)?;
        let first_mid = MessageId::new(rng.next_u32() as u16);
        Ok(Self {
            socket,
            config,
            state: Mutex::new(ClientState {
                rng: Box::new(rng),
                next_mid: first_mid,
                stats: ClientStats::default(),
                buf: vec![0u8; MAX_DATAGRAM + 1],
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// The counters so far.
    pub async fn stats(&self) -> ClientStats {
        self.state.lock().await.stats
    }

    /// Sends `request` to `peer` as a confirmable request and returns the
    /// response, with block-wise transfer both ways when a body exceeds
    /// the block size. Any response code is returned as `Ok`; errors are
    /// transport failures (no ACK after MAX_RETRANSMIT, Reset, a broken
    /// block-wise transfer).
    pub async fn request(&self, peer: SocketAddr, request: &Request) -> Result<Response> {
        let mut st = self.state.lock().await;
        let first = self.send_body(&mut st, peer, request).await?;
        self.fetch_rest(&mut st, peer, request, first).await
    }

    /// Sends the request body, block-wise if it is larger than one block;
    /// returns the final response packet.
    async fn send_body(
        &self,
        st: &mut ClientState,
        peer: SocketAddr,
        request: &Request,
    ) -> Result<Packet> {
        let body = request.payload();
        let mut size = self.config.block_size;
        if body.len() <= size.bytes() {
            let p = request.to_packet(
                MessageType::Confirmable,
                MessageId::new(0),
                Token::EMPTY,
                body,
            );
            return self.exchange(st, peer, p).await;
        }
        let mut offset = 0usize;
        loop {
            let num = u32::try_from(offset / size.bytes()).map_err(|_| Error::TooLarge {
                what: "request body",
                limit: offset,
            })?;
            let (chunk, more) = BlockOpt::slice(body, num, size)
                .ok_or(Error::Protocol("block offset past the body"))?;
            let chunk_len = chunk.len();
            let mut p = request.to_packet(
                MessageType::Confirmable,
                MessageId::new(0),
                Token::EMPTY,
                chunk,
            );
            p.add_option(opt::BLOCK1.into(), BlockOpt::new(num, more, size)?.encode());
            if num == 0 {
                let total = u32::try_from(body.len()).unwrap_or(u32::MAX);
                p.add_option(opt::SIZE1.into(), message::encode_uint(total));
            }
            let resp = self.exchange(st, peer, p).await?;
            st.stats.blocks_sent += 1;
            if !more {
                return Ok(resp);
            }
            let code = response_code(&resp);
            if code != Some(ResponseCode::CONTINUE) {
                // The server ended the transfer early (4.13, 4.08, ...):
                // that response is the answer.
                return Ok(resp);
            }
            let echo = block(&resp, opt::BLOCK1)?
                .ok_or(Error::Protocol("2.31 Continue without Block1"))?;
            if echo.num != num {
                return Err(Error::Protocol("2.31 Continue for another block"));
            }
            // The server may ask for smaller blocks (RFC 7959 §2.3).
            if echo.size < size {
                size = echo.size;
            }
            offset += chunk_len;
        }
    }

    /// If the response is the first of several Block2 blocks, asks for the
    /// rest and returns the whole response.
    async fn fetch_rest(
        &self,
        st: &mut ClientState,
        peer: SocketAddr,
        request: &Request,
        first: Packet,
    ) -> Result<Response> {
        let mut response = Response::from_packet(&first)?;
        let Some(b2) = block(&first, opt::BLOCK2)? else {
            return Ok(response);
        };
        if !b2.more {
            return Ok(response);
        }
        if b2.num != 0 {
            return Err(Error::Protocol("first Block2 response is not block 0"));
        }
        if let Some(size2) = message::single_option(&first, opt::SIZE2)?
            && message::decode_uint(size2, 4)? as usize > self.config.max_body
        {
            return Err(Error::TooLarge {
                what: "response body (Size2)",
                limit: self.config.max_body,
            });
        }
        let mut body = first.payload;
        let mut size = b2.size.min(self.config.block_size);
        if body.len() != b2.size.bytes() {
            return Err(Error::Protocol(
                "a Block2 block with more to come is not full",
            ));
        }
        st.stats.blocks_received += 1;
        loop {
            if !body.len().is_multiple_of(size.bytes()) {
                return Err(Error::Protocol("Block2 offset not on a block boundary"));
            }
            let num = u32::try_from(body.len() / size.bytes())
                .map_err(|_| Error::Protocol("Block2 number overflow"))?;
            let mut p = request.to_packet(
                MessageType::Confirmable,
                MessageId::new(0),
                Token::EMPTY,
                &[],
            );
            p.add_option(
                opt::BLOCK2.into(),
                BlockOpt::new(num, false, size)?.encode(),
            );
            let resp = self.exchange(st, peer, p).await?;
            let code = response_code(&resp).ok_or(Error::Protocol("not a response"))?;
            if !code.is_success() {
                return Err(Error::Status(code));
            }
            let got = block(&resp, opt::BLOCK2)?
                .ok_or(Error::Protocol("Block2 response without Block2"))?;
            if got.offset() != body.len() {
                return Err(Error::Protocol("Block2 block out of order"));
            }
            if got.more && resp.payload.len() != got.size.bytes() {
                return Err(Error::Protocol(
                    "a Block2 block with more to come is not full",
                ));
            }
            if body.len() + resp.payload.len() > self.config.max_body {
                return Err(Error::TooLarge {
                    what: "response body",
                    limit: self.config.max_body,
                });
            }
            body.extend_from_slice(&resp.payload);
            st.stats.blocks_received += 1;
            size = got.size;
            if !got.more {
                break;
            }
        }
        response.set_payload(body);
        Ok(response)
    }

    /// One confirmable message and its response: retransmits with
    /// exponential backoff until acknowledged (RFC 7252 §4.2), waits for a
    /// separate response after an empty ACK (§5.2.2), matches by message id
    /// and token, and accepts replies only from `peer` (§5.3.2).
    async fn exchange(
        &self,
        st: &mut ClientState,
        peer: SocketAddr,
        mut packet: Packet,
    ) -> Result<Packet> {
        let mid = st.fresh_mid();
        let token = st.fresh_token();
        packet.header.message_id = mid.get();
        packet.set_token(token.as_bytes().to_vec());
        let bytes = message::encode(&packet, MAX_DATAGRAM)?;

        let mut schedule = self.config.params.schedule(st.unit());
        st.stats.messages += 1;
        self.send(&bytes, peer).await?;
        let mut deadline = Instant::now() + schedule.current_timeout();
        let mut acknowledged = false;
        loop {
            let received = timeout_at(deadline, self.socket.recv_from(&mut st.buf)).await;
            let (n, from) = match received {
                Err(_elapsed) => {
                    if acknowledged {
                        st.stats.timeouts += 1;
                        return Err(Error::Timeout);
                    }
                    match schedule.on_timeout() {
                        Some(next) => {
                            st.stats.retransmissions += 1;
                            self.send(&bytes, peer).await?;
                            deadline = Instant::now() + next;
                            continue;
                        }
                        None => {
                            st.stats.timeouts += 1;
                            return Err(Error::Timeout);
                        }
                    }
                }
                Ok(Err(e)) => return Err(Error::Io(e)),
                Ok(Ok(x)) => x,
            };
            let datagram = &st.buf[..n];
            if fault::dropped(&self.config.fault, Direction::Incoming, datagram) {
                continue;
            }
            if from != peer {
                continue;
            }
            let Ok(reply) = message::decode(datagram) else {
                continue;
            };
            let kind = MessageType::of(&reply);
            let reply_mid = MessageId::new(reply.header.message_id);
            let ours = reply.get_token() == token.as_bytes();
            match (kind, message::code_kind(&reply)) {
                (MessageType::Reset, _) if reply_mid == mid => return Err(Error::Reset),
                (MessageType::Acknowledgement, CodeKind::Empty) if reply_mid == mid => {
                    // Separate response to follow.
                    acknowledged = true;
                    deadline = Instant::now()
                        + self
                            .config
                            .separate_response_timeout
                            .unwrap_or_else(|| self.config.params.max_transmit_wait());
                }
                (MessageType::Acknowledgement, CodeKind::Response) if reply_mid == mid && ours => {
                    check_critical(&reply)?;
                    return Ok(reply);
                }
                (MessageType::Confirmable | MessageType::NonConfirmable, CodeKind::Response)
                    if ours =>
                {
                    if kind == MessageType::Confirmable {
                        let ack = message::empty(MessageType::Acknowledgement, reply_mid);
                        self.send(&ack, peer).await?;
                    }
                    check_critical(&reply)?;
                    return Ok(reply);
                }
                (MessageType::Confirmable, _) => {
                    // Nothing we can relate it to (§4.2): reject.
                    let rst = message::empty(MessageType::Reset, reply_mid);
                    self.send(&rst, peer).await?;
                }
                _ => {}
            }
        }
    }

    async fn send(&self, datagram: &[u8], peer: SocketAddr) -> Result<()> {
        if fault::dropped(&self.config.fault, Direction::Outgoing, datagram) {
            return Ok(());
        }
        self.socket.send_to(datagram, peer).await?;
        Ok(())
    }
}

fn response_code(p: &Packet) -> Option<ResponseCode> {
    Response::from_packet(p).ok().map(|r| r.code())
}

fn block(p: &Packet, number: u16) -> Result<Option<BlockOpt>> {
    message::single_option(p, number)?
        .map(BlockOpt::decode)
        .transpose()
}

/// A response carrying a critical option we do not know is rejected
/// (RFC 7252 §5.4.1).
fn check_critical(p: &Packet) -> Result<()> {
    match message::unknown_critical_option(p, RESPONSE_OPTIONS_UNDERSTOOD) {
        Some(_) => Err(Error::Protocol(
            "response with an unrecognised critical option",
        )),
        None => Ok(()),
    }
}

#![no_main]
// A CoAP endpoint's whole receive path — decoding, deduplication,
// block-wise reassembly, critical options — on arbitrary datagrams, with a
// handler that answers at once and one that keeps every other request and
// answers it later (as the runtimes' links do). Never a panic; a reply, if
// any, is a datagram that decodes.
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealcast_coap::{
    DeferHandler, MessageId, Request, Response, ResponseCode, ServerCore, ServerSettings, Ticket,
};

struct Keep(Mutex<Vec<Ticket>>);

impl DeferHandler for Keep {
    fn handle(&self, request: &Request, _: SocketAddr, ticket: Ticket) -> Option<Response> {
        if request.payload().len() % 2 == 0 {
            self.0.lock().ok()?.push(ticket);
            None
        } else {
            Some(Response::new(ResponseCode::CHANGED))
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let peer: SocketAddr = ([192, 0, 2, 1], 5683).into();
    let t0 = Instant::now();
    let settings = ServerSettings {
        max_body: 4096,
        ..ServerSettings::default()
    };
    // The input as a sequence of datagrams, split on 0xfe.
    let datagrams: Vec<&[u8]> = data.split(|b| *b == 0xfe).collect();
    let mut now_core = ServerCore::new(settings, MessageId::new(1));
    let answer = |_: &Request, _: SocketAddr| Response::new(ResponseCode::CONTENT);
    let mut later_core = ServerCore::new(settings, MessageId::new(2));
    let keep = Keep(Mutex::new(Vec::new()));
    for (i, d) in datagrams.iter().enumerate() {
        let at = t0 + Duration::from_millis(i as u64 * 700);
        let _ = now_core.handle_datagram(d, peer, at, &answer);
        let _ = later_core.handle_datagram_deferred(d, peer, at, &keep);
    }
    let kept = keep.0.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default();
    for ticket in kept {
        let _ = later_core.complete(ticket, Response::new(ResponseCode::CHANGED), t0);
    }
});

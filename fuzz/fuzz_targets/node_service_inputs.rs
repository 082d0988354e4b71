#![no_main]
// The decoders of the node services added for issue #15, reachable from the
// network (transmission orders and their acks, relayed by agents), from a
// device's state file (the held order) and from decrypted readings (the
// number a plausibility rule reads) or command payloads (the operation an
// access-control policy reads): any bytes give a value or an error, never a
// panic; an order that decodes re-encodes to one that decodes the same.
// Also the status lists (from the manager, and a node's status.cbor), the
// misbehaviour reports' routing check, and the smart-meter downlink: a
// decrypted configuration command, a decrypted report that may be a
// meter's confirmation, a meter's downlink.cbor, and the DAP's routing test
// of a bundle. And access-control tokens: the claims a node decodes from a
// token it is sent or finds in a command, and the routing test. And a
// meter's transmission acknowledgement (a decrypted report) and the
// association update's routing test.
use sealcast_group::status::{MisbehaviourReport, StatusList, StatusRepository};
use sealcast_group::transmission::{OrderAck, TransmissionOrder, decode_stopped, encode_stopped};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(order) = TransmissionOrder::from_cbor(data) {
        let again = order
            .to_cbor()
            .unwrap_or_else(|e| panic!("re-encoding a decoded order: {e}"));
        let back = TransmissionOrder::from_cbor(&again)
            .unwrap_or_else(|e| panic!("re-decoding an order: {e}"));
        assert_eq!(back, order);
    }
    if let Ok(stopped) = decode_stopped(data) {
        let again = encode_stopped(&stopped).unwrap_or_else(|e| panic!("re-encoding scopes: {e}"));
        assert_eq!(decode_stopped(&again).ok(), Some(stopped));
    }
    let _ = OrderAck::looks_like(data);
    if let Ok(list) = StatusList::from_cbor(data) {
        let again = list
            .to_cbor()
            .unwrap_or_else(|e| panic!("re-encoding a decoded status list: {e}"));
        assert_eq!(StatusList::from_cbor(&again).ok(), Some(list.clone()));
        let repo = StatusRepository::from_bytes(data, &list.manager)
            .unwrap_or_else(|e| panic!("a decoded list as a status file: {e}"));
        assert_eq!(repo.version(), list.version);
    }
    let _ = StatusList::looks_like(data);
    if let Ok(token) = sealcast_group::token::AccessToken::from_cbor(data) {
        let again = token
            .to_cbor()
            .unwrap_or_else(|e| panic!("re-encoding decoded token claims: {e}"));
        assert_eq!(
            sealcast_group::token::AccessToken::from_cbor(&again).ok(),
            Some(token)
        );
    }
    let _ = sealcast_group::token::AccessToken::looks_like(data);
    let _ = MisbehaviourReport::claimed_reporter(data);
    let _ = sealcast_metering::plausibility::first_number(data);
    let _ = sealcast_group::acp::operation_of(data);
    use sealcast_metering::downlink::{Bundle, ConfigCommand, MeterAck, MeterDownlink};
    if let Ok(command) = ConfigCommand::decode(data) {
        let again = command
            .encode()
            .unwrap_or_else(|e| panic!("re-encoding a decoded command: {e}"));
        assert_eq!(ConfigCommand::decode(&again).ok(), Some(command));
    }
    if let Some(ack) = MeterAck::parse(data) {
        let again = ack
            .encode()
            .unwrap_or_else(|e| panic!("re-encoding an ack: {e}"));
        assert_eq!(MeterAck::parse(&again), Some(ack));
    }
    if let Ok(state) = MeterDownlink::import(data) {
        let again = state
            .export()
            .unwrap_or_else(|e| panic!("re-encoding a meter's downlink state: {e}"));
        let back = MeterDownlink::import(&again)
            .unwrap_or_else(|e| panic!("re-decoding a meter's downlink state: {e}"));
        assert_eq!(
            (back.epoch(), back.version()),
            (state.epoch(), state.version())
        );
    }
    let _ = Bundle::looks_like(data);
    if let Some(ack) = sealcast_metering::downlink::TransmissionAck::parse(data) {
        let again = ack
            .encode()
            .unwrap_or_else(|e| panic!("re-encoding a transmission ack: {e}"));
        assert_eq!(
            sealcast_metering::downlink::TransmissionAck::parse(&again),
            Some(ack)
        );
    }
    let _ = sealcast_metering::sa::SaUpdate::looks_like(data);
});

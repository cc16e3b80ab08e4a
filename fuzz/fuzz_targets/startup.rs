//! The untagged first packet of a client connection: `startup_header` on the stream, then
//! `parse_startup` on the packet (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage),
//! its parameters, the trace line and the parameter-name interning the session does.
//! (The session's own handling, `Session::on_startup_packet`, is `pub(super)`: not reachable.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::describe::describe_startup;
use pgmulti::protocol::framing::{parse_startup, startup_header, StartupPacket};
use pgmulti::protocol::{frontend, PROTOCOL_3_0};
use pgmulti::session::node::param_name;

fn check(packet: &[u8]) {
    let Ok(p) = parse_startup(packet) else {
        return;
    };
    let mut line = String::new();
    describe_startup(&p, &mut line);
    assert!(!line.contains(['\n', '\r']), "trace line breaks: {line:?}");
    if let StartupPacket::Startup { version, params } = p {
        assert_eq!(version >> 16, 3);
        let pairs: Vec<(&str, &str)> = params.iter().collect();
        assert_eq!(params.is_empty(), pairs.is_empty());
        for (name, value) in &pairs {
            assert!(!name.is_empty(), "empty parameter name accepted");
            assert!(!name.contains('\0') && !value.contains('\0'));
            assert_eq!(param_name(name), *name);
            // The first one wins.
            let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            assert_eq!(params.get(name), first);
        }
        // Rebuilt as 3.0 it is the same packet, but for the minor version.
        let mut again = Vec::new();
        frontend::startup_message(&mut again, &pairs);
        assert_eq!(again.len(), packet.len());
        assert_eq!(again[4..8], PROTOCOL_3_0.to_be_bytes());
        assert_eq!(again[..4], packet[..4]);
        assert_eq!(again[8..], packet[8..]);
    }
}

fuzz_target!(|data: &[u8]| {
    // As the session reads it: the header first, then the packet it announces.
    match startup_header(data) {
        Ok(Some(len)) if data.len() >= len => check(&data[..len]),
        _ => {}
    }
    // The packet as given, and with its length field made consistent.
    check(data);
    if data.len() >= 8 {
        let mut packet = data.to_vec();
        let n = packet.len() as u32;
        packet[..4].copy_from_slice(&n.to_be_bytes());
        check(&packet);
    }
});

//! Message framing: `message_header` over a stream of bytes as a socket would deliver it,
//! and the `Reader` cursor driven by a script taken from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::framing::{message_header, startup_header, Reader};
use pgmulti::protocol::MAX_MESSAGE_LEN;

fuzz_target!(|data: &[u8]| {
    // 1. A stream of tagged messages, split the way a relay splits its receive buffer.
    let limit = match data.first() {
        Some(b) if b & 1 == 0 => MAX_MESSAGE_LEN,
        Some(&b) => b as usize * 16,
        None => MAX_MESSAGE_LEN,
    };
    let mut rest = data.get(1..).unwrap_or_default();
    loop {
        match message_header(rest, limit) {
            Ok(Some((_tag, total))) => {
                assert!(total >= 5, "a message is at least its header");
                assert!(total - 1 <= limit, "length above the limit accepted");
                match rest.get(total..) {
                    Some(tail) => rest = tail,
                    None => break, // incomplete: wait for more bytes
                }
            }
            Ok(None) => {
                assert!(rest.len() < 5, "header not read although 5 bytes are there");
                break;
            }
            Err(_) => break,
        }
    }
    let _ = message_header(data, 0);
    let _ = message_header(data, usize::MAX);
    if let Ok(Some(len)) = startup_header(data) {
        assert!((8..=pgmulti::protocol::MAX_STARTUP_PACKET).contains(&len));
    }

    // 2. The Reader: the first half of the input is the script, the second the buffer.
    let (script, buf) = data.split_at(data.len() / 2);
    let mut r = Reader::new(buf);
    for &op in script {
        let before = r.remaining();
        let ok = match op % 12 {
            0 => r.u8().is_ok(),
            1 => r.i16().is_ok(),
            2 => r.i32().is_ok(),
            3 => r.u32().is_ok(),
            4 => r.count16().is_ok(),
            5 => r.cstr().is_ok(),
            6 => r.cstr_bytes().is_ok(),
            7 => r.bytes((op / 12) as usize).is_ok(),
            8 => r.bytes(usize::MAX - (op as usize)).is_ok(),
            9 => r.finish().is_ok(),
            10 => {
                let _ = r.rest();
                let _ = r.is_empty();
                true
            }
            _ => {
                let taken = r.take_rest().len();
                assert_eq!(taken, before);
                true
            }
        };
        assert!(r.remaining() <= before, "a read grew the buffer");
        if !ok && matches!(op % 12, 0..=3 | 7 | 8) {
            // A fixed-size read that does not fit consumes nothing. (A count16 or cstr that
            // fails on its value, not its length, has consumed the field: not checked.)
            assert_eq!(r.remaining(), before, "a failed read consumed bytes");
        }
    }
});

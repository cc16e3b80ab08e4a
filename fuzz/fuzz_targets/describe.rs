//! The trace describer: one line per message, for both directions, with whole bodies and
//! with prefixes of a longer message (`total_len` taken from the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::describe::{describe, message_name, push_escaped, QUERY_TEXT_CAP};
use pgmulti::protocol::Direction;

fn one_line(s: &str) {
    assert!(
        !s.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
        "trace line breaks: {s:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let Some((&tag, rest)) = rest.split_first() else {
        return;
    };
    let dir = if head & 1 == 0 {
        Direction::ToBackend
    } else {
        Direction::ToClient
    };
    let _ = message_name(dir, tag);

    // The whole body.
    let mut out = String::new();
    describe(dir, tag, rest, rest.len() + 5, &mut out);
    one_line(&out);

    // A prefix of a longer message: the claimed total from the next 4 bytes.
    if rest.len() >= 4 {
        let (len, body) = rest.split_at(4);
        let total = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let mut out = String::new();
        describe(dir, tag, body, total, &mut out);
        one_line(&out);
        // And a total that is absurd.
        let mut out = String::new();
        describe(dir, tag, body, usize::MAX, &mut out);
        one_line(&out);
        describe(dir, tag, body, 0, &mut out);
        one_line(&out);
    }

    // Secrets never reach the line: a 'p' message shows only its length. (100 bytes: longer
    // than the fixed text of the line, so the check cannot match that text by chance.)
    if dir == Direction::ToBackend && tag == b'p' && rest.len() >= 100 {
        let mut out = String::new();
        describe(dir, tag, rest, rest.len() + 5, &mut out);
        let escaped = {
            let mut e = String::new();
            push_escaped(&mut e, rest, usize::MAX);
            e
        };
        assert!(
            !out.contains(&escaped),
            "password body in the trace: {out:?}"
        );
    }

    let mut out = String::new();
    let shown = push_escaped(&mut out, rest, (head as usize) % (QUERY_TEXT_CAP + 1));
    assert!(shown <= rest.len());
    one_line(&out);
});

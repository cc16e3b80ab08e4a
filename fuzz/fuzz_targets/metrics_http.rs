//! The Prometheus endpoint's HTTP request parser (`metrics::parse_request`), on the whole
//! input and on every prefix of it, as the bytes arrive on the socket: an answer given for a
//! prefix must not change when more bytes come. Also the two-phase decision log's reader
//! (`two_phase::undone_commits`), which reads a file pgmulti wrote but that may be damaged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::metrics::{parse_request, HttpRequest, MAX_REQUEST_HEAD};
use pgmulti::replication::two_phase::undone_commits;

fuzz_target!(|data: &[u8]| {
    let whole = parse_request(data);
    if let HttpRequest::Get { path, .. } = whole {
        assert!(path.starts_with('/') && !path.contains('?'));
    }
    if data.len() >= MAX_REQUEST_HEAD {
        assert_ne!(
            whole,
            HttpRequest::Incomplete,
            "waits beyond the head limit"
        );
    }
    // The session parses what has arrived so far, again after each read.
    let step = (data.len() / 64).max(1);
    for n in (0..data.len()).step_by(step) {
        match parse_request(&data[..n]) {
            HttpRequest::Incomplete => {}
            HttpRequest::Get { path, head } => {
                assert_eq!(
                    whole,
                    HttpRequest::Get { path, head },
                    "answer changed at {n}"
                )
            }
            HttpRequest::Bad(_) => {
                assert!(
                    matches!(whole, HttpRequest::Bad(_)),
                    "a refused prefix accepted at {n}"
                )
            }
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let undone = undone_commits(text);
        assert!(undone.len() <= text.lines().count());
    }
});

//! The auth_file (PgBouncer userlist format) as text, each kind of secret on its own, the
//! SCRAM verifier's round trip, and MD5 answers checked against whatever parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::auth::md5;
use pgmulti::auth::userlist::{ScramSecret, Secret, UserList};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(list) = UserList::parse(text, "fuzz.txt") {
        assert!(list.len() <= text.lines().count());
        assert_eq!(list.is_empty(), list.len() == 0);
        let _ = format!("{list:?}");
        let _ = list.get("");
    } else if let Err(e) = UserList::parse(text, "fuzz.txt") {
        assert!(
            e.starts_with("fuzz.txt:"),
            "error without file and line: {e}"
        );
    }

    // Each line's second field on its own, as `Secret::parse` sees it.
    // (The first few lines only: MD5 through OpenSSL costs microseconds, and checking every
    // line of a long input made the target 10x slower without reaching more code.)
    for candidate in std::iter::once(text).chain(text.lines().take(4)) {
        match Secret::parse(candidate) {
            Ok(Secret::Scram(s)) => {
                let verifier = s.to_verifier();
                let again = ScramSecret::parse(&verifier).expect("own verifier must parse");
                assert!(again == s, "SCRAM verifier does not round-trip");
                assert!(
                    !format!("{s:?}").contains(&verifier),
                    "Debug shows the secret"
                );
            }
            Ok(secret) => {
                // Debug never shows the secret.
                let shown = format!("{secret:?}");
                assert!(shown.ends_with("(<masked>)"), "{shown}");
                // The client's answer comes from the network: arbitrary bytes, and the right one.
                let salt = [1, 2, 3, 4];
                let _ = md5::verify(&secret, "user", salt, candidate.as_bytes());
                if let Secret::Md5(stored) = &secret {
                    let right = md5::client_response(stored, salt);
                    assert!(md5::verify(&secret, "user", salt, right.as_bytes()));
                }
                if let Secret::Plain(p) = &secret {
                    if !p.is_empty() {
                        let stored = md5::password_hash("user", p);
                        let right = md5::client_response(&stored, salt);
                        assert!(md5::verify(&secret, "user", salt, right.as_bytes()));
                    }
                }
            }
            Err(_) => {}
        }
    }
});

//! pgmulti as the SCRAM-SHA-256 server its clients log in to: arbitrary client-first and
//! client-final messages, against a real verifier (fixed nonce, so the fuzzer can echo it),
//! against the "mock" exchange for unknown users, and an honest client's exchange with one
//! message tampered by the fuzzer, which must then fail.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgmulti::auth::scram::{ScramClient, ScramCredentials, ScramServer};
use pgmulti::auth::userlist::ScramSecret;

const PASSWORD: &str = "pencil";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";

struct Fixture {
    secret: ScramSecret,
    /// The verifier's keys as an honest client's login captures them: logging in with them
    /// needs no PBKDF2, which keeps every run fast.
    keys: ScramCredentials,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // A fixed salt (not `with_random_salt`) keeps runs reproducible.
        let secret = ScramSecret::from_password(PASSWORD, b"pgmulti fuzz salt", 4096);
        let mut server = ScramServer::new(secret.clone(), Some(SERVER_NONCE.into()));
        let mut client = ScramClient::new(ScramCredentials::Password(PASSWORD.into()), None);
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        let fin = server.client_final(&cf).unwrap();
        client.server_final(&fin).unwrap();
        let keys = ScramCredentials::Keys {
            client_key: server.client_key().unwrap(),
            server_key: secret.server_key,
        };
        Fixture { secret, keys }
    })
}

/// Apply one edit from `edit` to `msg`: insert, overwrite, truncate or replace.
fn tamper(msg: &[u8], edit: &[u8]) -> Vec<u8> {
    let Some((&op, rest)) = edit.split_first() else {
        return msg.to_vec();
    };
    let Some((&pos, bytes)) = rest.split_first() else {
        return msg.to_vec();
    };
    let pos = (pos as usize).min(msg.len());
    let mut out = msg.to_vec();
    match op % 4 {
        0 => {
            out.splice(pos..pos, bytes.iter().copied());
        }
        1 => {
            for (i, &b) in bytes.iter().enumerate() {
                match out.get_mut(pos + i) {
                    Some(o) => *o = b,
                    None => out.push(b),
                }
            }
        }
        2 => out.truncate(pos),
        _ => out = bytes.to_vec(),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    // Two messages, separated by the first NUL (SCRAM messages are text).
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(n) => (&rest[..n], Some(&rest[n + 1..])),
        None => (rest, None),
    };
    match mode % 4 {
        0 | 1 => {
            let mut server = if mode % 4 == 0 {
                ScramServer::new(f.secret.clone(), Some(SERVER_NONCE.into()))
            } else {
                // Unknown user: always fails (the random nonce makes it harder to get far).
                ScramServer::mock("someone", b"mock nonce")
            };
            let first_ok = server.client_first(first).is_ok();
            if let Some(last) = last {
                let r = server.client_final(last);
                // Without the password (or keys) nobody can produce a valid proof.
                assert!(r.is_err(), "server accepted a made-up proof");
                // The exchange is over: any further message is refused.
                assert!(server.client_final(last).is_err());
                assert!(server.client_first(first).is_err());
            } else if first_ok {
                assert!(
                    server.client_first(first).is_err(),
                    "client-first accepted twice"
                );
            }
            assert!(server.client_key().is_none());
        }
        _ => {
            // An honest client (with the captured keys); the fuzzer tampers with one message.
            let tamper_first = mode % 4 == 2;
            let edit = rest;
            let mut client = ScramClient::new(f.keys.clone(), Some(CLIENT_NONCE.into()));
            let mut server = ScramServer::new(f.secret.clone(), Some(SERVER_NONCE.into()));
            let genuine_first = client.client_first();
            let sent_first = if tamper_first {
                tamper(&genuine_first, edit)
            } else {
                genuine_first.clone()
            };
            let Ok(server_first) = server.client_first(&sent_first) else {
                return;
            };
            let Ok(genuine_final) = client.server_first(&server_first) else {
                // The client refuses only a server-first it cannot use: it came from a
                // tampered client-first (another nonce).
                assert!(tamper_first && sent_first != genuine_first);
                return;
            };
            let sent_final = if tamper_first {
                genuine_final.clone()
            } else {
                tamper(&genuine_final, edit)
            };
            match server.client_final(&sent_final) {
                Ok(server_final) => {
                    assert_eq!(sent_first, genuine_first, "tampered client-first accepted");
                    assert_eq!(sent_final, genuine_final, "tampered client-final accepted");
                    assert!(server.client_key().is_some());
                    client
                        .server_final(&server_final)
                        .expect("client refuses the genuine server-final");
                }
                Err(_) => {
                    assert!(
                        sent_first != genuine_first || sent_final != genuine_final,
                        "the genuine exchange failed"
                    );
                    assert!(server.client_key().is_none());
                }
            }
        }
    }
});

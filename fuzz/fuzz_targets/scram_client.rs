//! pgmulti as the SCRAM-SHA-256 client logging in to a node: arbitrary server-first and
//! server-final messages, with password credentials and with captured keys, and an honest
//! node's exchange with one message tampered by the fuzzer, which must then fail.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgmulti::auth::scram::{ScramClient, ScramCredentials, ScramServer, MAX_NODE_ITERATIONS};
use pgmulti::auth::userlist::ScramSecret;

const PASSWORD: &str = "pencil";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";

struct Fixture {
    secret: ScramSecret,
    keys: ScramCredentials,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
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

/// The iteration count a server-first-message asks for, if it reads as one.
fn iterations(msg: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(msg).ok()?;
    text.split(',')
        .find_map(|a| a.strip_prefix("i=")?.parse().ok())
}

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
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(n) => (&rest[..n], Some(&rest[n + 1..])),
        None => (rest, None),
    };
    match mode % 4 {
        0 | 1 => {
            // Password credentials compute PBKDF2 with the server's count: above
            // MAX_NODE_ITERATIONS the client refuses (cheap, and fuzzed); between 4097 and
            // that limit the keys are used instead, so that one run stays well under 1 ms.
            let expensive =
                iterations(first).is_some_and(|n| n > 4096 && n <= u64::from(MAX_NODE_ITERATIONS));
            let credentials = if mode % 4 == 0 && !expensive {
                ScramCredentials::Password(PASSWORD.into())
            } else {
                f.keys.clone()
            };
            let mut client = ScramClient::new(credentials, Some(CLIENT_NONCE.into()));
            // Out of order: before client-first.
            assert!(client.server_first(first).is_err());
            let client_first = client.client_first();
            assert!(client_first.starts_with(b"n,,n=,r="));
            let accepted = client.server_first(first);
            if let Ok(client_final) = &accepted {
                let text = std::str::from_utf8(client_final).expect("client-final is text");
                assert!(text.starts_with("c=biws,r="), "{text}");
                if iterations(first).is_some_and(|n| n > u64::from(MAX_NODE_ITERATIONS))
                    && mode % 4 == 0
                {
                    panic!("password client accepted more than MAX_NODE_ITERATIONS");
                }
            }
            if let Some(last) = last {
                let r = client.server_final(last);
                // Only a server that knows the verifier can sign, and it signs the nonce it
                // got, which no made-up message has (the made-up server-first decided it).
                if r.is_ok() {
                    // Possible only if `first` was what the real server answers.
                    let mut server = ScramServer::new(f.secret.clone(), Some(SERVER_NONCE.into()));
                    let genuine = server.client_first(&client_first).unwrap();
                    assert_eq!(first, &genuine[..], "client accepted a forged server-final");
                }
                assert!(
                    client.server_final(last).is_err(),
                    "server-final accepted twice"
                );
            }
        }
        _ => {
            let tamper_first = mode % 4 == 2;
            let mut client = ScramClient::new(f.keys.clone(), Some(CLIENT_NONCE.into()));
            let mut server = ScramServer::new(f.secret.clone(), Some(SERVER_NONCE.into()));
            let genuine_first = server.client_first(&client.client_first()).unwrap();
            let sent_first = if tamper_first {
                tamper(&genuine_first, rest)
            } else {
                genuine_first.clone()
            };
            let Ok(client_final) = client.server_first(&sent_first) else {
                assert!(tamper_first && sent_first != genuine_first);
                return;
            };
            let genuine_final = match server.client_final(&client_final) {
                Ok(m) => m,
                Err(_) => {
                    // The server rejects the proof made over a tampered server-first.
                    assert!(tamper_first && sent_first != genuine_first);
                    // The client never accepts a server-final it cannot check.
                    assert!(client.server_final(b"v=").is_err());
                    return;
                }
            };
            let sent_final = if tamper_first {
                genuine_final.clone()
            } else {
                tamper(&genuine_final, rest)
            };
            match client.server_final(&sent_final) {
                Ok(()) => {
                    assert_eq!(sent_first, genuine_first, "tampered server-first accepted");
                    // RFC 5802 lets extensions follow the verifier (",x=…"); they are not
                    // signed and pgmulti ignores them. The verifier itself must be genuine.
                    let verifier = sent_final.split(|&b| b == b',').next().unwrap_or_default();
                    assert_eq!(
                        verifier,
                        &genuine_final[..],
                        "tampered server-final accepted"
                    );
                }
                Err(_) => assert!(
                    sent_first != genuine_first || sent_final != genuine_final,
                    "the genuine exchange failed"
                ),
            }
        }
    }
});

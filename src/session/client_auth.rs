//! pgmulti authenticating the client against `auth_file` (`client_auth`), and what the
//! client's proof leaves behind for logging in to nodes as the same user (`Credentials`):
//! a plaintext password, an MD5 hash, or the SCRAM ClientKey recovered from the client's
//! proof (which opens a node whose verifier is the same as the auth_file one).

use super::node::Credentials;
use super::{Session, State, Transition};
use crate::auth::md5;
use crate::auth::scram::ScramServer;
use crate::auth::userlist::{ScramSecret, Secret};
use crate::config::ClientAuth as Method;
use crate::net::endpoint::Broken;
use crate::protocol::backend;
use crate::protocol::framing::message_header;
use crate::protocol::frontend::{parse_password_message, parse_sasl_initial_response};
use crate::reactor::context::Context;

pub enum ClientAuth {
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Scram {
        server: Box<ScramServer>,
        first_done: bool,
    },
}

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

impl Session {
    fn secret(&self, cx: &Context) -> Option<Secret> {
        cx.shared.users.get(self.user()).cloned()
    }

    pub(super) fn begin_authentication(&mut self, cx: &mut Context) -> Transition {
        let secret = self.secret(cx);
        self.credentials = Credentials::from_secret(secret.as_ref());
        let out = &mut cx.shared.out;
        out.clear();
        let auth = match cx.shared.config.client_auth {
            Method::Trust => {
                backend::authentication_ok(out);
                self.send_to_client(cx);
                return Transition::Goto(State::NodeLogin);
            }
            Method::Password => {
                backend::authentication_cleartext_password(out);
                ClientAuth::Cleartext
            }
            // As PostgreSQL: md5 with a SCRAM verifier stored performs SCRAM.
            Method::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
                let mut salt = [0u8; 4];
                let _ = openssl::rand::rand_bytes(&mut salt);
                backend::authentication_md5_password(out, salt);
                ClientAuth::Md5 { salt }
            }
            Method::Md5 | Method::ScramSha256 => {
                let server = match secret {
                    Some(Secret::Scram(s)) => ScramServer::new(s, None),
                    Some(Secret::Plain(p)) => {
                        let user = self.user_name().to_string();
                        let known = cx.shared.verifiers.get(&user).filter(|(pw, _)| *pw == p);
                        let secret = match known {
                            Some((_, s)) => s.clone(),
                            None => {
                                let s = ScramSecret::with_random_salt(&p);
                                cx.shared.verifiers.insert(user, (p, s.clone()));
                                s
                            }
                        };
                        ScramServer::new(secret, None)
                    }
                    // Unknown user or an MD5 hash: an exchange that fails like any wrong
                    // password, with a salt as stable as a real user's.
                    _ => ScramServer::mock(self.user_name(), &cx.shared.mock_nonce),
                };
                backend::authentication_sasl(out, &["SCRAM-SHA-256"]);
                ClientAuth::Scram {
                    server: Box::new(server),
                    first_done: false,
                }
            }
        };
        self.send_to_client(cx);
        self.auth = Some(auth);
        Transition::Goto(State::Authenticating)
    }

    pub(super) fn on_auth_message(&mut self, cx: &mut Context) -> Transition {
        match self.client.fill() {
            Ok(_) => {}
            Err(Broken::Closed) => {
                return Transition::Close(
                    "client closed the connection during authentication".into(),
                )
            }
            Err(Broken::Error(e)) => return Transition::Close(format!("client read error: {e}")),
        }
        let data = self.client.rx.data();
        let (tag, len) = match message_header(data, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) if data.len() >= h.1 => h,
            Ok(_) => return Transition::Stay,
            Err(e) => return self.protocol_violation(cx, &e.to_string()),
        };
        if tag != b'p' {
            return self.protocol_violation(
                cx,
                &format!(
                    "expected password response, got message type {:?}",
                    tag as char
                ),
            );
        }
        let body = data[5..len].to_vec();
        self.client.rx.consume(len);
        trace::trace_message(
            &self.prefix,
            Peer::Client,
            Peer::Pgmulti,
            tag,
            &body,
            len,
            &mut cx.shared.scratch,
        );
        match self.check_password(&body, cx) {
            Ok(false) => Transition::Stay,
            Ok(true) => {
                self.auth = None;
                let out = &mut cx.shared.out;
                out.clear();
                backend::authentication_ok(out);
                self.send_to_client(cx);
                Transition::Goto(State::NodeLogin)
            }
            Err(why) => {
                let msg = format!(
                    "password authentication failed for user \"{}\"",
                    self.user()
                );
                self.fatal(cx, "28P01", &msg);
                Transition::Close(format!("{msg}: {why}"))
            }
        }
    }

    /// One password message. Ok(true) authenticated, Ok(false) exchange continues.
    fn check_password(&mut self, body: &[u8], cx: &mut Context) -> Result<bool, String> {
        let secret = self.secret(cx);
        let Some(auth) = self.auth.as_mut() else {
            return Err("no authentication in progress".into());
        };
        match auth {
            ClientAuth::Cleartext => {
                let given = parse_password_message(body).map_err(|e| e.to_string())?;
                let given = std::str::from_utf8(given).map_err(|_| "password is not UTF-8")?;
                let ok = match &secret {
                    Some(Secret::Plain(p)) => ct_eq(p.as_bytes(), given.as_bytes()),
                    Some(Secret::Md5(h)) => ct_eq(
                        h.as_bytes(),
                        md5::password_hash(self.user(), given).as_bytes(),
                    ),
                    Some(Secret::Scram(s)) => {
                        let derived = ScramSecret::from_password(given, &s.salt, s.iterations);
                        ct_eq(&derived.stored_key, &s.stored_key)
                    }
                    None => false,
                };
                if !ok {
                    return Err(if secret.is_none() {
                        "user not in auth_file".into()
                    } else {
                        "wrong password".into()
                    });
                }
                self.credentials.password = Some(given.to_string());
                Ok(true)
            }
            ClientAuth::Md5 { salt } => {
                let given = parse_password_message(body).map_err(|e| e.to_string())?;
                match &secret {
                    Some(s)
                        if md5::verify(
                            s,
                            super::startup::find_param(&self.params, "user").unwrap_or_default(),
                            *salt,
                            given,
                        ) =>
                    {
                        Ok(true)
                    }
                    Some(_) => Err("wrong password".into()),
                    None => Err("user not in auth_file".into()),
                }
            }
            ClientAuth::Scram { server, first_done } => {
                if !*first_done {
                    let (mechanism, data) =
                        parse_sasl_initial_response(body).map_err(|e| e.to_string())?;
                    if mechanism != "SCRAM-SHA-256" {
                        return Err(format!("client selected an invalid SASL authentication mechanism {mechanism:?}"));
                    }
                    let reply = server.client_first(data)?;
                    *first_done = true;
                    let out = &mut cx.shared.out;
                    out.clear();
                    backend::authentication_sasl_continue(out, &reply);
                    self.send_to_client(cx);
                    return Ok(false);
                }
                let reply = server.client_final(body)?;
                let client_key = server.client_key();
                match &secret {
                    Some(Secret::Scram(s)) => {
                        self.credentials.scram_keys =
                            client_key.map(|k| Box::new((k, s.server_key)));
                    }
                    Some(Secret::Plain(_)) => {}
                    _ => {
                        return Err("user not in auth_file or has no SCRAM/plaintext secret".into())
                    }
                }
                let out = &mut cx.shared.out;
                out.clear();
                backend::authentication_sasl_final(out, &reply);
                self.send_to_client(cx);
                Ok(true)
            }
        }
    }

    pub(super) fn protocol_violation(&mut self, cx: &mut Context, what: &str) -> Transition {
        cx.shared.stats.protocol_errors += 1;
        self.fatal(cx, "08P01", &format!("protocol violation: {what}"));
        Transition::Close(format!("protocol violation: {what}"))
    }
}

use crate::trace::{self, Peer};

/// Constant-time comparison that, unlike `openssl::memcmp::eq`, accepts unequal lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

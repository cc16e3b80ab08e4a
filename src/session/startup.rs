//! The first packets of a client connection: SSLRequest (answered 'S' and TLS started, or
//! 'N'), GSSENCRequest ('N'), CancelRequest (handed to the loop), StartupMessage (user,
//! database and parameters recorded, authentication begun).

use super::{Session, State, Transition};
use crate::net::endpoint::Broken;
use crate::net::transport::Handshake;
use crate::protocol::describe::describe_startup;
use crate::protocol::framing::{parse_startup, startup_header, StartupPacket};
use crate::protocol::{backend, PROTOCOL_3_0};
use crate::reactor::context::{CancelAsk, Context};

impl Session {
    pub(super) fn on_startup_packet(&mut self, cx: &mut Context) -> Transition {
        // A CancelRequest arrives with the end of stream right behind it: look at what was
        // read before acting on the end.
        let filled = self.client.fill();
        // A client may send several packets back to back (GSSENCRequest refused, then SSLRequest).
        loop {
            let data = self.client.rx.data();
            let len = match startup_header(data) {
                Ok(Some(len)) if data.len() >= len => len,
                Ok(_) => {
                    return match filled {
                        Ok(_) => Transition::Stay,
                        Err(Broken::Closed) => {
                            Transition::Close("client closed the connection before startup".into())
                        }
                        Err(Broken::Error(e)) => {
                            Transition::Close(format!("client read error: {e}"))
                        }
                    }
                }
                // As PostgreSQL: logged, and the connection closed without an answer.
                Err(e) => {
                    cx.shared.stats.protocol_errors += 1;
                    return Transition::Close(e.to_string());
                }
            };
            let packet = match parse_startup(&data[..len]) {
                Ok(p) => p,
                Err(e) => {
                    cx.shared.stats.protocol_errors += 1;
                    match e.code {
                        Some(_) if e.legacy => {
                            let out = &mut cx.shared.out;
                            out.clear();
                            backend::error_response_legacy(out, "FATAL", &e.message);
                            self.client.tx.extend_always(out);
                        }
                        Some(code) => self.fatal(cx, code, &e.message),
                        None => {}
                    }
                    return Transition::Close(e.message);
                }
            };
            if log::log_enabled!(log::Level::Trace) {
                let s = &mut cx.shared.scratch;
                s.clear();
                describe_startup(&packet, s);
                log::trace!("{} client > pgmulti {}", self.prefix, s);
            }
            match packet {
                StartupPacket::SslRequest => {
                    self.client.rx.consume(len);
                    return self.on_ssl_request(cx);
                }
                StartupPacket::GssEncRequest => {
                    self.client.rx.consume(len);
                    if !self.answer_byte(b'N') {
                        return Transition::Close("could not answer GSSENCRequest".into());
                    }
                }
                StartupPacket::CancelRequest {
                    process_id,
                    secret_key,
                } => {
                    cx.shared.cancel_asks.push(CancelAsk {
                        process_id,
                        secret_key: Some(secret_key),
                        except: None,
                    });
                    return Transition::Close(format!("cancel request for process {process_id}"));
                }
                StartupPacket::Startup { version, params } => {
                    self.params = params
                        .iter()
                        .map(|(k, v)| (super::node::param_name(k), v.to_string()))
                        .collect();
                    // A newer minor version or protocol options: say what is spoken (3.0, none).
                    let options: Vec<&str> = params
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| k.starts_with("_pq_."))
                        .collect();
                    if version & 0xffff > 0 || !options.is_empty() {
                        let out = &mut cx.shared.out;
                        out.clear();
                        backend::negotiate_protocol_version(out, PROTOCOL_3_0, &options);
                        self.send_to_client(cx);
                    }
                    self.client.rx.consume(len);
                    return self.on_startup_message(cx);
                }
            }
        }
    }

    fn on_ssl_request(&mut self, cx: &mut Context) -> Transition {
        if self.client_tls {
            self.fatal(
                cx,
                "08P01",
                "SSLRequest received on an encrypted connection",
            );
            return Transition::Close("SSLRequest after TLS".into());
        }
        // Bytes after an SSLRequest before the handshake are a downgrade attempt (CVE-2021-23214).
        if !self.client.rx.is_empty() {
            return Transition::Close("received unencrypted data after SSL request".into());
        }
        let Some(tls) = cx.shared.client_tls.as_ref() else {
            return if self.answer_byte(b'N') {
                Transition::Stay
            } else {
                Transition::Close("could not answer SSLRequest".into())
            };
        };
        let ssl = match tls.session() {
            Ok(ssl) => ssl,
            Err(e) => return Transition::Close(format!("TLS setup failed: {e}")),
        };
        if !self.answer_byte(b'S') {
            return Transition::Close("could not answer SSLRequest".into());
        }
        if let Err(e) = self.client.transport.start_tls(ssl) {
            return Transition::Close(e);
        }
        Transition::Goto(State::ClientTls)
    }

    /// Send a one-byte answer to SSLRequest/GSSENCRequest right away (before any TLS).
    fn answer_byte(&mut self, b: u8) -> bool {
        self.client.tx.extend(&[b]) && self.client.flush().is_ok() && self.client.tx.is_empty()
    }

    pub(super) fn on_client_tls(&mut self, _cx: &mut Context) -> Transition {
        match self.client.transport.handshake() {
            Handshake::Done => {
                self.client_tls = true;
                Transition::Goto(State::Startup)
            }
            Handshake::WouldBlock => {
                self.client.readable = false;
                Transition::Stay
            }
            Handshake::Failed(e) => Transition::Close(format!("client TLS handshake failed: {e}")),
        }
    }

    fn on_startup_message(&mut self, cx: &mut Context) -> Transition {
        let user = self.param("user").unwrap_or_default().to_string();
        if user.is_empty() {
            self.fatal(
                cx,
                "28000",
                "no PostgreSQL user name specified in startup packet",
            );
            return Transition::Close("no user name in startup packet".into());
        }
        if self.param("database").is_none_or(str::is_empty) {
            self.params.retain(|(k, _)| k != "database");
            self.params.push(("database".into(), user.clone()));
        }
        self.split_startup_params();
        if self.param("database") == Some(crate::admin::DATABASE) {
            if !cx.shared.config.admin_users.contains(&user) {
                self.fatal(
                    cx,
                    "42501",
                    &format!("permission denied: \"{user}\" is not in admin_users"),
                );
                return Transition::Close("admin console refused: not in admin_users".into());
            }
            self.admin = true;
        }
        let database = self.param("database").unwrap_or_default();
        self.prefix = format!("C-{} {}/{}@{}", self.id, database, user, self.peer());
        log::debug!(
            "{} login ({})",
            self.prefix,
            if self.client_tls { "TLS" } else { "no TLS" }
        );
        self.begin_authentication(cx)
    }

    pub(super) fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// The user name the client logged in with.
    pub(super) fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }
}

/// A startup parameter's value (a function of the list alone, for callers that borrow other
/// parts of the session at the same time).
pub(super) fn find_param<'a>(params: &'a [super::node::Param], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

//! The connection from a session to a node: nonblocking connect, optional SSLRequest and TLS
//! per `backend_sslmode`, StartupMessage with the client's parameters, and login with the
//! credentials the client's authentication left (cleartext, MD5, SCRAM). Errors the node
//! sends during login go on to the client, and so do ParameterStatus and notices of the node
//! that speaks for the session (`voice`); the node's BackendKeyData is kept for cancels —
//! the session gives the client pgmulti's own key.

use std::net::SocketAddr;

use crate::auth::md5;
use crate::auth::scram::{ScramClient, ScramCredentials};
use crate::net::buffer::Buf;
use crate::net::endpoint::{Broken, Endpoint};
use crate::net::transport::{Handshake, Io, Transport};
use crate::protocol::backend::{self, Authentication};
use crate::protocol::framing::message_header;
use crate::protocol::{frontend, MAX_MESSAGE_LEN};
use crate::reactor::context::Context;
use crate::trace::{self, Peer};

/// A startup parameter: name and value. Common names are static strings: an idle session
/// keeps its parameters, and a heap string costs 32 bytes.
pub type Param = (std::borrow::Cow<'static, str>, String);

/// The name of a startup parameter, static for the usual ones.
pub fn param_name(name: &str) -> std::borrow::Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "user",
        "database",
        "application_name",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "extra_float_digits",
        "search_path",
        "options",
        "replication",
    ];
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(name.to_string()),
    }
}

/// What pgmulti can present to a node for a user: from auth_file, or left by the client's
/// own authentication (see `client_auth`).
#[derive(Default)]
pub struct Credentials {
    pub password: Option<String>,
    pub md5: Option<String>,
    /// Boxed: most sessions have none, and every idle session carries the field.
    pub scram_keys: Option<Box<([u8; 32], [u8; 32])>>,
}

impl Credentials {
    /// From an auth_file secret alone (no client: a SCRAM verifier gives nothing).
    pub fn from_secret(secret: Option<&crate::auth::userlist::Secret>) -> Credentials {
        use crate::auth::userlist::Secret;
        match secret {
            Some(Secret::Plain(p)) => Credentials {
                password: Some(p.clone()),
                ..Default::default()
            },
            Some(Secret::Md5(h)) => Credentials {
                md5: Some(h.clone()),
                ..Default::default()
            },
            _ => Credentials::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState {
    Connecting,
    /// SSLRequest sent; waiting for the one-byte answer.
    SslAnswer,
    Tls,
    /// StartupMessage sent; authentication and parameters until ReadyForQuery.
    Login,
    /// The client's startup parameters sent as SET; until ReadyForQuery.
    Configuring,
    Ready,
}

pub enum LoginStep {
    Pending,
    Ready,
    /// Login failed. `refused`: the node answered with an ErrorResponse (its SQLSTATE),
    /// which already went to the client; None: the node could not be reached or spoke
    /// nonsense.
    Failed {
        reason: String,
        refused: Option<String>,
    },
}

pub struct NodeConn {
    pub index: u8,
    pub ep: Endpoint,
    pub addr: SocketAddr,
    host: String,
    pub state: LoginState,
    pub backend_key: Option<(u32, u32)>,
    scram: Option<Box<ScramClient>>,
    /// Bytes for the node that did not fit its send buffer (a large statement): fed into it
    /// as it drains. Only replication mode queues here; its size is bounded by the largest
    /// client message accepted.
    overflow: Vec<u8>,
    /// How much of `overflow` has moved into the send buffer.
    overflow_sent: usize,
    /// Bytes of a message too large for the receive buffer still to pass (replication mode):
    /// streamed to the client when this node is the voice, else dropped.
    pub passing: usize,
    pub passing_to_client: bool,
    /// A message too large for the receive buffer that must be read whole (the lead's row
    /// of a write replicated by its effect: its hidden columns), being collected.
    pub collecting: Vec<u8>,
    /// The node's ParameterStatus values (login and SETs since), replayed to the client.
    pub server_params: ServerParams,
    /// The client's startup parameters have been applied (see `configure`).
    pub configured: bool,
    /// Taken from the pool rather than logged in for this session.
    pub from_pool: bool,
}

/// `SET "name" = 'value';` for each setting.
pub fn set_sql(settings: &[Param]) -> String {
    let mut sql = String::new();
    for (name, value) in settings {
        sql.push_str(&format!(
            "SET \"{}\" = '{}';",
            name.replace('"', "\"\""),
            value.replace('\'', "''")
        ));
    }
    sql
}

/// A node's reported parameters as `name\0value\0` pairs in one allocation: a node reports
/// about fourteen at login, and every pooled or session connection keeps them.
#[derive(Default, Clone, Debug)]
pub struct ServerParams(Vec<u8>);

impl ServerParams {
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some((start, end)) = self.find(name) {
            self.0.drain(start..end);
        }
        for part in [name, value] {
            self.0.extend_from_slice(part.as_bytes());
            self.0.push(0);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self
            .0
            .split(|&b| b == 0)
            .map(|p| std::str::from_utf8(p).unwrap_or_default());
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
            .filter(|(n, _)| !n.is_empty())
    }

    /// The byte range of `name`'s pair.
    fn find(&self, name: &str) -> Option<(usize, usize)> {
        let mut at = 0;
        while at < self.0.len() {
            let name_end = at + self.0[at..].iter().position(|&b| b == 0)?;
            let value_end = name_end + 1 + self.0[name_end + 1..].iter().position(|&b| b == 0)?;
            if &self.0[at..name_end] == name.as_bytes() {
                return Some((at, value_end + 1));
            }
            at = value_end + 1;
        }
        None
    }
}

/// What the login needs from its session.
pub struct LoginContext<'a> {
    pub prefix: &'a str,
    pub user: &'a str,
    pub params: &'a [Param],
    pub credentials: &'a Credentials,
    pub client_tx: &'a mut Buf,
    /// Whether this node's ParameterStatus and notices reach the client.
    pub voice: bool,
}

impl NodeConn {
    pub fn connect(index: u8, host: &str, addr: SocketAddr) -> Result<NodeConn, String> {
        let transport = Transport::connect(addr)
            .map_err(|e| format!("could not connect to node {index} ({addr}): {e}"))?;
        Ok(NodeConn {
            index,
            ep: Endpoint::new(transport),
            addr,
            host: host.to_string(),
            state: LoginState::Connecting,
            backend_key: None,
            scram: None,
            overflow: Vec::new(),
            overflow_sent: 0,
            passing: 0,
            passing_to_client: false,
            collecting: Vec::new(),
            server_params: ServerParams::default(),
            configured: false,
            from_pool: false,
        })
    }

    /// Queue whole messages for the node, beyond the send buffer if need be.
    pub fn send(&mut self, bytes: &[u8]) {
        if !(self.overflow.is_empty() && self.ep.tx.extend(bytes)) {
            self.overflow.extend_from_slice(bytes);
            self.feed();
        }
    }

    /// How many bytes `send` can take now within the send buffer.
    pub fn room(&self) -> usize {
        if self.overflow.is_empty() {
            self.ep.tx.free()
        } else {
            0
        }
    }

    /// Whether `send` of `len` bytes would stay within the send buffer.
    pub fn has_room(&self, len: usize) -> bool {
        self.overflow.is_empty() && self.ep.tx.free() >= len
    }

    /// Move queued bytes into the send buffer as far as it has room.
    pub fn feed(&mut self) {
        if self.overflow.is_empty() {
            return;
        }
        let rest = &self.overflow[self.overflow_sent..];
        let n = self.ep.tx.free().min(rest.len());
        if n > 0 && self.ep.tx.extend(&rest[..n]) {
            self.overflow_sent += n;
        }
        if self.overflow_sent == self.overflow.len() {
            self.overflow = Vec::new();
            self.overflow_sent = 0;
        }
    }

    /// Bytes waiting to be written to the node.
    pub fn queued(&self) -> usize {
        self.ep.tx.len() + self.overflow.len() - self.overflow_sent
    }

    /// Write what is queued; Err when the node connection is gone.
    pub fn flush(&mut self) -> Result<usize, Broken> {
        let mut total = 0;
        loop {
            self.feed();
            let n = self.ep.flush()?;
            total += n;
            if n == 0 || self.overflow.is_empty() {
                return Ok(total);
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == LoginState::Ready
    }

    /// Say Terminate (if logged in) and close TLS. Never blocks. The socket leaves the poller
    /// when the connection is dropped (closing it).
    pub fn terminate(&mut self) {
        if self.state == LoginState::Ready {
            let mut out = Vec::with_capacity(5);
            frontend::terminate(&mut out);
            self.ep.tx.extend(&out);
            let _ = self.ep.flush();
        }
        // Dropping the connection closes the socket, which also leaves the poller.
        self.ep.transport.shutdown();
    }

    /// Nothing half-sent or half-read: the connection can serve another client after a reset.
    pub fn is_quiet(&self) -> bool {
        self.state == LoginState::Ready
            && self.ep.rx.is_empty()
            && self.ep.tx.is_empty()
            && self.overflow.is_empty()
            && self.passing == 0
    }

    /// Apply the client's startup parameters with SET (pooled connections are logged in
    /// with user and database only, so that any client can use them). `reset`: first undo
    /// the settings another client left (RESET ALL). Nothing to do: the connection is
    /// configured at once.
    pub fn configure(&mut self, settings: &[Param], reset: bool) {
        if settings.is_empty() && !reset {
            self.configured = true;
            return;
        }
        let mut sql = String::from(if reset { "RESET ALL;" } else { "" });
        sql.push_str(&set_sql(settings));
        let mut out = Vec::with_capacity(sql.len() + 6);
        frontend::query(&mut out, &sql);
        self.send(&out);
        self.state = LoginState::Configuring;
    }

    /// Advance the login and then the SETs of `settings` (see `configure`): Ready once both
    /// are done.
    pub fn login_and_configure(
        &mut self,
        lc: &mut LoginContext,
        settings: &[Param],
        cx: &mut Context,
    ) -> LoginStep {
        let step = self.login(lc, cx);
        if !matches!(step, LoginStep::Ready) || self.configured {
            return step;
        }
        // Logged in with user and database only: now the client's own parameters.
        self.configure(settings, false);
        match self.login(lc, cx) {
            LoginStep::Ready if !self.configured => LoginStep::Pending,
            other => other,
        }
    }

    /// Advance the login as far as the socket allows.
    pub fn login(&mut self, lc: &mut LoginContext, cx: &mut Context) -> LoginStep {
        loop {
            let before = self.state;
            let step = match self.state {
                LoginState::Connecting => self.on_connecting(lc, cx),
                LoginState::SslAnswer => self.on_ssl_answer(lc, cx),
                LoginState::Tls => self.on_tls(lc, cx),
                LoginState::Login | LoginState::Configuring => self.on_login_messages(lc, cx),
                LoginState::Ready => return LoginStep::Ready,
            };
            if let Err(f) = self.ep.flush() {
                return LoginStep::Failed {
                    reason: format!("node {}: {f}", self.index),
                    refused: None,
                };
            }
            match step {
                LoginStep::Pending if self.state != before => continue,
                other => return other,
            }
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> LoginStep {
        LoginStep::Failed {
            reason: format!("node {} ({}): {what}", self.index, self.addr),
            refused: None,
        }
    }

    fn on_connecting(&mut self, lc: &mut LoginContext, cx: &mut Context) -> LoginStep {
        if !self.ep.writable {
            return LoginStep::Pending;
        }
        match self.ep.transport.connected() {
            Ok(false) => {
                self.ep.writable = false;
                LoginStep::Pending
            }
            Err(e) => self.fail(format!("could not connect: {e}")),
            Ok(true) if cx.shared.node_tls.wanted() => {
                let mut out = Vec::with_capacity(8);
                frontend::ssl_request(&mut out);
                log::trace!("{} pgmulti > node{} SSLRequest", lc.prefix, self.index);
                self.ep.tx.extend(&out);
                self.state = LoginState::SslAnswer;
                LoginStep::Pending
            }
            Ok(true) => {
                self.send_startup(lc, cx);
                LoginStep::Pending
            }
        }
    }

    fn on_ssl_answer(&mut self, lc: &mut LoginContext, cx: &mut Context) -> LoginStep {
        if !self.ep.readable {
            return LoginStep::Pending;
        }
        let mut answer = [0u8; 1];
        match self.ep.transport.read_bytes(&mut answer) {
            Io::Done(_) => {}
            Io::WouldBlock => {
                self.ep.readable = false;
                return LoginStep::Pending;
            }
            Io::Closed => return self.fail("closed the connection after SSLRequest"),
            Io::Error(e) => return self.fail(e),
        }
        log::trace!(
            "{} node{} > pgmulti SSLRequest answer {:?}",
            lc.prefix,
            self.index,
            answer[0] as char
        );
        match answer[0] {
            b'S' => {
                let ssl = match cx.shared.node_tls.session(&self.host) {
                    Ok(s) => s,
                    Err(e) => return self.fail(format!("TLS setup: {e}")),
                };
                if let Err(e) = self.ep.transport.start_tls(ssl) {
                    return self.fail(e);
                }
                self.state = LoginState::Tls;
                LoginStep::Pending
            }
            b'N' if !cx.shared.node_tls.required() => {
                self.send_startup(lc, cx);
                LoginStep::Pending
            }
            b'N' => self.fail("server does not support SSL, but backend_sslmode requires it"),
            other => self.fail(format!(
                "unexpected answer {:?} to SSLRequest",
                other as char
            )),
        }
    }

    fn on_tls(&mut self, lc: &mut LoginContext, cx: &mut Context) -> LoginStep {
        match self.ep.transport.handshake() {
            Handshake::Done => {
                self.send_startup(lc, cx);
                LoginStep::Pending
            }
            Handshake::WouldBlock => {
                self.ep.readable = false;
                LoginStep::Pending
            }
            Handshake::Failed(e) => self.fail(e),
        }
    }

    fn send_startup(&mut self, lc: &mut LoginContext, cx: &mut Context) {
        let out = &mut cx.shared.out;
        out.clear();
        let params: Vec<(&str, &str)> = lc
            .params
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        frontend::startup_message(out, &params);
        log::trace!(
            "{} pgmulti > node{} StartupMessage {} parameters",
            lc.prefix,
            self.index,
            params.len()
        );
        self.ep.tx.extend(out);
        self.state = LoginState::Login;
    }

    fn on_login_messages(&mut self, lc: &mut LoginContext, cx: &mut Context) -> LoginStep {
        // A node that refuses a login sends its FATAL error and closes: relay the error first.
        let filled = self.ep.fill();
        loop {
            let data = self.ep.rx.data();
            let (tag, len) = match message_header(data, MAX_MESSAGE_LEN) {
                Ok(Some(h)) if data.len() >= h.1 => h,
                Ok(Some(h)) if h.1 > self.ep.rx.capacity() => {
                    return self.fail(format!("login message of {} bytes is too large", h.1));
                }
                Ok(_) => {
                    return match &filled {
                        Ok(_) => LoginStep::Pending,
                        Err(Broken::Closed) => self.fail("closed the connection during login"),
                        Err(Broken::Error(e)) => self.fail(e),
                    }
                }
                Err(e) => return self.fail(e),
            };
            let body = &data[5..len];
            trace::trace_message(
                lc.prefix,
                Peer::Node(self.index),
                Peer::Pgmulti,
                tag,
                body,
                len,
                &mut cx.shared.scratch,
            );
            let step = match tag {
                b'R' => {
                    let body = body.to_vec();
                    self.on_authentication_request(&body, lc, cx)
                }
                b'K' => match backend::parse_backend_key_data(body) {
                    Ok(k) => {
                        self.backend_key = Some(k);
                        None
                    }
                    Err(e) => Some(self.fail(e)),
                },
                b'S' => {
                    if let Ok((name, value)) = backend::parse_parameter_status(body) {
                        self.server_params.set(name, value);
                    }
                    None
                }
                b'N' => {
                    if lc.voice {
                        lc.client_tx.extend(&data[..len]);
                    }
                    None
                }
                // The answers to the SETs of `configure`.
                b'C' if self.state == LoginState::Configuring => None,
                b'E' => {
                    let (reason, code) = match backend::parse_error_fields(body) {
                        Ok(f) => (
                            format!(
                                "node {} refused login: {} {}",
                                self.index, f.code, f.message
                            ),
                            f.code.to_string(),
                        ),
                        Err(_) => (format!("node {} refused login", self.index), String::new()),
                    };
                    lc.client_tx.extend(&data[..len]);
                    Some(LoginStep::Failed {
                        reason,
                        refused: Some(code),
                    })
                }
                b'v' => None, // NegotiateProtocolVersion: the node speaks 3.0 minus some options; fine
                b'Z' => {
                    if self.state == LoginState::Configuring {
                        self.configured = true;
                    }
                    self.state = LoginState::Ready;
                    Some(LoginStep::Ready)
                }
                other => Some(self.fail(format!(
                    "unexpected message {:?} during login",
                    other as char
                ))),
            };
            self.ep.rx.consume(len);
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// Answer an Authentication* request of the node. None = continue.
    fn on_authentication_request(
        &mut self,
        body: &[u8],
        lc: &mut LoginContext,
        cx: &mut Context,
    ) -> Option<LoginStep> {
        let request = match backend::parse_authentication(body) {
            Ok(r) => r,
            Err(e) => return Some(self.fail(e)),
        };
        let creds = lc.credentials;
        let out = &mut cx.shared.out;
        out.clear();
        match request {
            Authentication::Ok => return None,
            Authentication::CleartextPassword => match &creds.password {
                Some(p) => frontend::password_message(out, p.as_bytes()),
                None => return Some(self.no_secret(lc.user, "a cleartext password")),
            },
            Authentication::Md5Password { salt } => {
                let stored = match (&creds.md5, &creds.password) {
                    (Some(h), _) => h.clone(),
                    (None, Some(p)) => md5::password_hash(lc.user, p),
                    (None, None) => return Some(self.no_secret(lc.user, "an MD5 password")),
                };
                frontend::password_message(out, md5::client_response(&stored, salt).as_bytes());
            }
            Authentication::Sasl { mut mechanisms } => {
                if !mechanisms.any(|m| m == "SCRAM-SHA-256") {
                    return Some(
                        self.fail("offers no SASL mechanism pgmulti supports (SCRAM-SHA-256)"),
                    );
                }
                let credentials = match (&creds.password, &creds.scram_keys) {
                    (Some(p), _) => ScramCredentials::Password(p.clone()),
                    (None, Some(keys)) => ScramCredentials::Keys {
                        client_key: keys.0,
                        server_key: keys.1,
                    },
                    (None, None) => {
                        return Some(self.no_secret(lc.user, "SCRAM-SHA-256 authentication"))
                    }
                };
                let mut client = ScramClient::new(credentials, None);
                let first = client.client_first();
                frontend::sasl_initial_response(out, "SCRAM-SHA-256", &first);
                self.scram = Some(Box::new(client));
            }
            Authentication::SaslContinue(data) => {
                let Some(client) = self.scram.as_mut() else {
                    return Some(self.fail("SASLContinue without a SASL exchange"));
                };
                match client.server_first(data) {
                    Ok(reply) => frontend::sasl_response(out, &reply),
                    Err(e) => return Some(self.fail(format!("SCRAM: {e}"))),
                }
            }
            Authentication::SaslFinal(data) => {
                let Some(client) = self.scram.as_mut() else {
                    return Some(self.fail("SASLFinal without a SASL exchange"));
                };
                if let Err(e) = client.server_final(data) {
                    return Some(self.fail(format!("SCRAM: {e}")));
                }
                self.scram = None;
                return None;
            }
            Authentication::Other(code) => {
                return Some(self.fail(format!(
                    "asks for authentication method {code}, which pgmulti does not support"
                )))
            }
        }
        trace::trace_built(
            lc.prefix,
            Peer::Pgmulti,
            Peer::Node(self.index),
            out,
            &mut cx.shared.scratch,
        );
        self.ep.tx.extend(out);
        None
    }

    fn no_secret(&self, user: &str, what: &str) -> LoginStep {
        self.fail(format!(
            "asks for {what} for user \"{user}\" and pgmulti has no usable secret for it (see auth_file in docs/configuration.md)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::ServerParams;

    #[test]
    fn server_params_keep_one_value_per_name_in_order() {
        let mut p = ServerParams::default();
        p.set("application_name", "");
        p.set("DateStyle", "ISO, MDY");
        p.set("application_name", "psql");
        p.set("TimeZone", "UTC");
        let all: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            all,
            [
                ("DateStyle", "ISO, MDY"),
                ("application_name", "psql"),
                ("TimeZone", "UTC")
            ]
        );
    }
}

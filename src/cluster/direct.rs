//! A plain blocking connection to a node, for the few things pgmulti does before its event
//! loop starts (checking `max_prepared_transactions`, finishing in-doubt two-phase
//! transactions) or in a thread of their own (`CHECK CONSISTENCY`). Never used by the loop. Logs in as `health_check_user` with
//! `health_check_password` or the auth_file entry (cleartext, MD5 or SCRAM; TLS per
//! `backend_sslmode`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use openssl::ssl::SslStream;

use crate::auth::md5;
use crate::auth::scram::{ScramClient, ScramCredentials};
use crate::net::tls::NodeTls;
use crate::protocol::backend::{self, Authentication};
use crate::protocol::frontend;

/// The password pgmulti logs in with on its own: `health_check_password`, else the
/// auth_file entry of `health_check_user` when it is plaintext, else none (trust).
pub fn own_password(
    config: &crate::config::Config,
    users: &crate::auth::userlist::UserList,
) -> Option<String> {
    match (
        config.health_check_password.as_str(),
        users.get(&config.health_check_user),
    ) {
        ("", Some(crate::auth::userlist::Secret::Plain(p))) => Some(p.clone()),
        ("", _) => None,
        (p, _) => Some(p.to_string()),
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Direct {
    stream: Box<dyn Stream>,
    /// The socket under `stream`, for its timeouts.
    socket: TcpStream,
}

/// Rows of a result, text format (NULL = None).
pub type Rows = Vec<Vec<Option<String>>>;

impl Direct {
    pub fn connect(
        addr: SocketAddr,
        host: &str,
        user: &str,
        password: Option<&str>,
        database: &str,
        tls: &NodeTls,
    ) -> Result<Direct, String> {
        let timeout = Duration::from_secs(10);
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        let _ = tcp.set_read_timeout(Some(timeout));
        let _ = tcp.set_write_timeout(Some(timeout));
        let socket = tcp.try_clone().map_err(|e| e.to_string())?;
        let mut stream: Box<dyn Stream> = Box::new(tcp.try_clone().map_err(|e| e.to_string())?);
        if tls.wanted() {
            let mut out = Vec::new();
            frontend::ssl_request(&mut out);
            stream.write_all(&out).map_err(|e| e.to_string())?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
            match answer[0] {
                b'S' => {
                    let ssl = tls.session(host)?;
                    let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
                    s.connect().map_err(|e| format!("TLS: {e}"))?;
                    stream = Box::new(s);
                }
                _ if tls.required() => return Err("the node does not support SSL".into()),
                _ => {}
            }
        }
        let mut d = Direct { stream, socket };
        let mut out = Vec::new();
        frontend::startup_message(&mut out, &[("user", user), ("database", database)]);
        d.stream.write_all(&out).map_err(|e| e.to_string())?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let (tag, body) = d.read_message()?;
            let mut out = Vec::new();
            match tag {
                b'R' => match backend::parse_authentication(&body).map_err(|e| e.to_string())? {
                    Authentication::Ok => continue,
                    Authentication::CleartextPassword => frontend::password_message(
                        &mut out,
                        password.ok_or("a password is needed")?.as_bytes(),
                    ),
                    Authentication::Md5Password { salt } => {
                        let hash =
                            md5::password_hash(user, password.ok_or("a password is needed")?);
                        frontend::password_message(
                            &mut out,
                            md5::client_response(&hash, salt).as_bytes(),
                        );
                    }
                    Authentication::Sasl { .. } => {
                        let p = password.ok_or("a password is needed")?;
                        let mut c =
                            ScramClient::new(ScramCredentials::Password(p.to_string()), None);
                        frontend::sasl_initial_response(
                            &mut out,
                            "SCRAM-SHA-256",
                            &c.client_first(),
                        );
                        scram = Some(c);
                    }
                    Authentication::SaslContinue(data) => {
                        let reply = scram
                            .as_mut()
                            .ok_or("unexpected SASL")?
                            .server_first(data)?;
                        frontend::sasl_response(&mut out, &reply);
                    }
                    Authentication::SaslFinal(data) => {
                        scram
                            .as_mut()
                            .ok_or("unexpected SASL")?
                            .server_final(data)?;
                        continue;
                    }
                    Authentication::Other(code) => {
                        return Err(format!("unsupported authentication {code}"))
                    }
                },
                b'E' => return Err(error_text(&body)),
                b'Z' => return Ok(d),
                _ => continue,
            }
            d.stream.write_all(&out).map_err(|e| e.to_string())?;
        }
    }

    /// How long a read may wait for the node (`None`: for ever); 10 s after `connect`.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), String> {
        self.socket
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut header = [0u8; 5];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=64 * 1024 * 1024).contains(&len) {
            return Err(format!("invalid message length {len}"));
        }
        let mut body = vec![0u8; len - 4];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok((header[0], body))
    }

    /// Run one statement; the rows of its result.
    pub fn query(&mut self, sql: &str) -> Result<Rows, String> {
        let mut out = Vec::new();
        frontend::query(&mut out, sql);
        self.stream.write_all(&out).map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_message()?;
            match tag {
                b'D' => rows.push(data_row(&body)),
                b'E' => error = Some(error_text(&body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut cols = Vec::new();
    let count = body
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]));
    let mut at = 2;
    for _ in 0..count.max(0) {
        let Some(len) = body
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break;
        };
        at += 4;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let v = body.get(at..at + len as usize).unwrap_or_default();
        cols.push(Some(String::from_utf8_lossy(v).into_owned()));
        at += len as usize;
    }
    cols
}

fn error_text(body: &[u8]) -> String {
    backend::parse_error_fields(body)
        .map(|f| format!("{} {}", f.code, f.message))
        .unwrap_or_else(|_| "unreadable error".into())
}

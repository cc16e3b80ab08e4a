//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, for both directions:
//! `ScramServer` checks a client against a stored verifier, `ScramClient` logs pgmulti into a
//! node. Only the mechanism "SCRAM-SHA-256" is offered, so channel binding is never used:
//! gs2 headers "n,," and "y,," are accepted and "p=..." is refused.
//!
//! Pure message-in/message-out logic: no sockets, and every message from the other side is
//! parsed into a `Result` with a clear message. Passwords are used as their UTF-8 bytes;
//! SASLprep (which PostgreSQL applies and which changes only some non-ASCII passwords) is not.

use std::fmt;

use openssl::memcmp;
use openssl::sha::{sha256, Sha256};

use super::userlist::ScramSecret;
use super::{decode_base64, encode_base64};

/// The SASL mechanism name pgmulti advertises in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iteration count for verifiers pgmulti makes itself (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Highest iteration count accepted, as PostgreSQL stores it in an `int`.
pub const MAX_ITERATIONS: u32 = i32::MAX as u32;
/// Most iterations pgmulti computes for a node's SCRAM challenge: PBKDF2 runs on the event
/// loop, and 2^31 rounds would stop it for minutes (100,000 take about 30 ms).
pub const MAX_NODE_ITERATIONS: u32 = 100_000;
/// Salt length for verifiers pgmulti makes itself (PostgreSQL's default).
const SALT_LEN: usize = 16;
/// Random bytes in a nonce before base64 (PostgreSQL's SCRAM_RAW_NONCE_LEN).
const RAW_NONCE_LEN: usize = 18;
/// "n,," in base64: the channel-binding attribute of a client that uses none.
const GS2_HEADER_NO_BINDING_B64: &str = "biws";

/// Secrets a `ScramClient` proves it knows.
#[derive(Clone)]
pub enum ScramCredentials {
    /// The plaintext password.
    Password(String),
    /// ClientKey and ServerKey captured from a client's successful login against the same
    /// verifier (PgBouncer's trick): enough to log in to a node without the plaintext.
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredentials::Password(_) => f.write_str("ScramCredentials::Password(<masked>)"),
            ScramCredentials::Keys { .. } => f.write_str("ScramCredentials::Keys(<masked>)"),
        }
    }
}

/// pgmulti's side of a client's SCRAM-SHA-256 login.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        gs2_header: String,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Authenticated {
        client_key: [u8; 32],
    },
    Failed,
}

impl ScramServer {
    /// `server_nonce_suffix`: `None` draws 18 random bytes (base64); tests pass a fixed one,
    /// which must be printable ASCII without ','.
    pub fn new(secret: ScramSecret, server_nonce_suffix: Option<String>) -> ScramServer {
        ScramServer {
            secret,
            server_nonce: server_nonce_suffix.unwrap_or_else(random_nonce),
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// For a user that does not exist: an exchange that looks normal and always fails, with a
    /// salt that stays the same for the same user name (PostgreSQL's "mock" authentication),
    /// so the reply does not tell whether the user exists. `mock_nonce` is a secret drawn once
    /// per process.
    pub fn mock(user: &str, mock_nonce: &[u8]) -> ScramServer {
        let mut hash = Sha256::new();
        hash.update(user.as_bytes());
        hash.update(mock_nonce);
        let secret = ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: hash.finish()[..SALT_LEN].to_vec(),
            // No ClientKey hashes to all zeros (that would be a SHA-256 preimage).
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        ScramServer::new(secret, None)
    }

    /// Takes the client-first-message, returns the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let ServerState::AwaitingClientFirst =
            std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err("SCRAM client-first-message arrived out of order".to_string());
        };
        let text = message_text(msg, "client-first-message")?;
        let (gs2_header, client_first_bare) = split_gs2_header(text)?;
        let client_nonce = parse_client_first_bare(client_first_bare)?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            encode_base64(&self.secret.salt),
            self.secret.iterations
        );
        self.state = ServerState::AwaitingClientFinal {
            gs2_header: gs2_header.to_string(),
            nonce,
            client_first_bare: client_first_bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final-message, verifies the proof, returns the server-final-message.
    /// A wrong proof gives `Err("password authentication failed")` (SQLSTATE 28P01).
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let ServerState::AwaitingClientFinal {
            gs2_header,
            nonce,
            client_first_bare,
            server_first,
        } = std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err("SCRAM client-final-message arrived out of order".to_string());
        };
        let text = message_text(msg, "client-final-message")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or("malformed SCRAM client-final-message: no proof (\"p=\")")?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attribute(attributes.next(), 'c', "client-final-message")?;
        let channel_binding = decode_base64(channel_binding)
            .map_err(|e| format!("malformed SCRAM client-final-message: channel binding: {e}"))?;
        if channel_binding != gs2_header.as_bytes() {
            return Err(
                "SCRAM channel binding check failed: \"c=\" does not repeat the gs2 header"
                    .to_string(),
            );
        }
        if attribute(attributes.next(), 'r', "client-final-message")? != nonce {
            return Err("SCRAM nonce mismatch in client-final-message".to_string());
        }
        check_extensions(attributes, "client-final-message")?;
        let proof = decode_key(proof, "proof", "client-final-message")?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !memcmp::eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err("password authentication failed".to_string());
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        self.state = ServerState::Authenticated { client_key };
        Ok(format!("v={}", encode_base64(&server_signature)).into_bytes())
    }

    /// After a successful `client_final`: the client's ClientKey, which with the verifier's
    /// ServerKey forms `ScramCredentials::Keys` for logging in to nodes.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Authenticated { client_key } => Some(client_key),
            _ => None,
        }
    }
}

/// pgmulti's side of its own SCRAM-SHA-256 login to a node.
pub struct ScramClient {
    credentials: ScramCredentials,
    client_nonce: String,
    /// Sent as "n="; PostgreSQL ignores it, so pgmulti sends it empty (tests use the RFC's).
    user: String,
    state: ClientState,
}

enum ClientState {
    Initial,
    AwaitingServerFirst { client_first_bare: String },
    AwaitingServerFinal { server_signature: [u8; 32] },
    Authenticated,
    Failed,
}

impl ScramClient {
    /// `client_nonce`: `None` draws 18 random bytes (base64); tests pass a fixed one, which
    /// must be printable ASCII without ','.
    pub fn new(credentials: ScramCredentials, client_nonce: Option<String>) -> ScramClient {
        ScramClient {
            credentials,
            client_nonce: client_nonce.unwrap_or_else(random_nonce),
            user: String::new(),
            state: ClientState::Initial,
        }
    }

    /// The client-first-message: "n,,n=,r=<nonce>". Calling it again restarts the exchange.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!("n={},r={}", self.user, self.client_nonce);
        let msg = format!("n,,{client_first_bare}");
        self.state = ClientState::AwaitingServerFirst { client_first_bare };
        msg.into_bytes()
    }

    /// Takes the server-first-message, returns the client-final-message carrying the proof.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let ClientState::AwaitingServerFirst { client_first_bare } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err("SCRAM server-first-message arrived out of order".to_string());
        };
        let what = "server-first-message";
        let text = message_text(msg, what)?;
        let mut attributes = text.split(',');
        let first = attributes.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err("server requires an unsupported SCRAM extension (\"m=\")".to_string());
        }
        let nonce = attribute(first, 'r', what)?;
        check_nonce(nonce, what)?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(
                "SCRAM nonce mismatch: the server's nonce does not extend ours".to_string(),
            );
        }
        let salt = decode_base64(attribute(attributes.next(), 's', what)?)
            .map_err(|e| format!("malformed SCRAM {what}: salt: {e}"))?;
        if salt.is_empty() {
            return Err(format!("malformed SCRAM {what}: empty salt"));
        }
        let iterations = parse_iterations(attribute(attributes.next(), 'i', what)?)
            .map_err(|e| format!("malformed SCRAM {what}: {e}"))?;
        check_extensions(attributes, what)?;

        let (client_key, server_key) = match &self.credentials {
            ScramCredentials::Password(_) if iterations > MAX_NODE_ITERATIONS => {
                return Err(format!(
                    "the server asks for {iterations} SCRAM iterations; pgmulti computes at most {MAX_NODE_ITERATIONS} (store a verifier with fewer, or give pgmulti the verifier's keys)"
                ));
            }
            ScramCredentials::Password(password) => {
                let salted = salted_password(password.as_bytes(), &salt, iterations);
                (client_key(&salted), server_key(&salted))
            }
            ScramCredentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let without_proof = format!("c={GS2_HEADER_NO_BINDING_B64},r={nonce}");
        let auth_message = format!("{client_first_bare},{text},{without_proof}");
        let client_signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        self.state = ClientState::AwaitingServerFinal {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", encode_base64(&proof)).into_bytes())
    }

    /// Takes the server-final-message and checks the server's signature.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), String> {
        let ClientState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err("SCRAM server-final-message arrived out of order".to_string());
        };
        let what = "server-final-message";
        let text = message_text(msg, what)?;
        let mut attributes = text.split(',');
        let first = attributes.next();
        if let Some(error) = first.and_then(|a| a.strip_prefix("e=")) {
            return Err(format!("server rejected SCRAM authentication: {error}"));
        }
        let signature = decode_key(attribute(first, 'v', what)?, "server signature", what)?;
        check_extensions(attributes, what)?;
        if !memcmp::eq(&signature, &server_signature) {
            return Err(
                "SCRAM server signature is wrong: the server does not know the password"
                    .to_string(),
            );
        }
        self.state = ClientState::Authenticated;
        Ok(())
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "awaiting client-first-message",
            ServerState::AwaitingClientFinal { .. } => "awaiting client-final-message",
            ServerState::Authenticated { .. } => "authenticated",
            ServerState::Failed => "failed",
        };
        write!(f, "ScramServer({state})")
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "initial",
            ClientState::AwaitingServerFirst { .. } => "awaiting server-first-message",
            ClientState::AwaitingServerFinal { .. } => "awaiting server-final-message",
            ClientState::Authenticated => "authenticated",
            ClientState::Failed => "failed",
        };
        write!(f, "ScramClient({state})")
    }
}

/// HMAC-SHA-256 (RFC 2104) over OpenSSL's SHA-256, keeping the keyed inner and outer states
/// so that PBKDF2's thousands of rounds reuse them.
#[derive(Clone)]
struct HmacSha256 {
    inner: Sha256,
    outer: Sha256,
}

impl HmacSha256 {
    fn new(key: &[u8]) -> HmacSha256 {
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&sha256(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(&block.map(|b| b ^ 0x36));
        let mut outer = Sha256::new();
        outer.update(&block.map(|b| b ^ 0x5c));
        HmacSha256 { inner, outer }
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(message);
        let mut outer = self.outer.clone();
        outer.update(&inner.finish());
        outer.finish()
    }
}

pub(crate) fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    HmacSha256::new(key).mac(message)
}

/// RFC 5802's Hi(): PBKDF2-HMAC-SHA-256 giving one 32-byte block, the SaltedPassword,
/// computed by OpenSSL. An iteration count of 0 is treated as 1; callers reject 0 before
/// getting here.
pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let digest = openssl::hash::MessageDigest::sha256();
    match openssl::pkcs5::pbkdf2_hmac(password, salt, iterations.max(1) as usize, digest, &mut out)
    {
        Ok(()) => out,
        // Never a made-up key: the same function by hand.
        Err(_) => salted_password_by_hand(password, salt, iterations),
    }
}

fn salted_password_by_hand(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = HmacSha256::new(password);
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = prf.mac(&first);
    let mut result = u;
    for _ in 1..iterations {
        u = prf.mac(&u);
        result = xor(&result, &u);
    }
    result
}

pub(crate) fn client_key(salted_password: &[u8; 32]) -> [u8; 32] {
    hmac(salted_password, b"Client Key")
}

pub(crate) fn server_key(salted_password: &[u8; 32]) -> [u8; 32] {
    hmac(salted_password, b"Server Key")
}

/// An iteration count as written in a verifier or a server-first-message: decimal, 1..=i32::MAX.
pub(crate) fn parse_iterations(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("iteration count {text:?} is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("iteration count must be at least 1".to_string()),
        Ok(n) if n <= MAX_ITERATIONS => Ok(n),
        _ => Err(format!("iteration count {text} is above {MAX_ITERATIONS}")),
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Not input-derived: failure means the system has no usable entropy source, and carrying
    // on with predictable salts and nonces would be worse than stopping.
    openssl::rand::rand_bytes(&mut bytes).expect("OpenSSL random generator failed");
    bytes
}

fn random_nonce() -> String {
    encode_base64(&random_bytes::<RAW_NONCE_LEN>())
}

fn message_text<'a>(msg: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(msg).map_err(|_| format!("malformed SCRAM {what}: not valid UTF-8"))
}

/// The value of attribute `name` ("r=..." → "..."), which must come next in the message.
fn attribute<'a>(attr: Option<&'a str>, name: char, what: &str) -> Result<&'a str, String> {
    attr.and_then(|a| a.strip_prefix(name))
        .and_then(|a| a.strip_prefix('='))
        .ok_or_else(|| format!("malformed SCRAM {what}: expected attribute \"{name}=\""))
}

/// Optional trailing extensions: each must look like "x=value"; their meaning is ignored.
fn check_extensions<'a>(rest: impl Iterator<Item = &'a str>, what: &str) -> Result<(), String> {
    for attr in rest {
        let bytes = attr.as_bytes();
        if bytes.len() < 2 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b'=' {
            return Err(format!("malformed SCRAM {what}: garbage {attr:?}"));
        }
    }
    Ok(())
}

/// A nonce is printable ASCII except ',' (RFC 5802 "printable"), and never empty.
fn check_nonce(nonce: &str, what: &str) -> Result<(), String> {
    if nonce.is_empty() {
        return Err(format!("malformed SCRAM {what}: empty nonce"));
    }
    if !nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(format!(
            "malformed SCRAM {what}: nonce has a non-printable character"
        ));
    }
    Ok(())
}

fn decode_key(b64: &str, name: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = decode_base64(b64).map_err(|e| format!("malformed SCRAM {what}: {name}: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "malformed SCRAM {what}: {name} is {} bytes, expected 32",
            bytes.len()
        )
    })
}

/// Splits "n,,rest" / "y,,rest" into the gs2 header and client-first-message-bare.
fn split_gs2_header(text: &str) -> Result<(&str, &str), String> {
    if text.starts_with("p=") {
        return Err(
            "client requires SCRAM channel binding (\"p=\"), but only SCRAM-SHA-256 \
                    without channel binding is offered"
                .to_string(),
        );
    }
    if text.starts_with("n,a=") || text.starts_with("y,a=") {
        return Err(
            "client uses a SCRAM authorization identity (\"a=\"), which is not supported"
                .to_string(),
        );
    }
    if text.starts_with("n,,") || text.starts_with("y,,") {
        return Ok(text.split_at(3));
    }
    Err("malformed SCRAM client-first-message: expected gs2 header \"n,,\" or \"y,,\"".to_string())
}

/// Checks client-first-message-bare ("n=user,r=nonce[,ext...]") and returns the client nonce.
/// The user name is ignored, as PostgreSQL does: the startup packet already named the user.
fn parse_client_first_bare(bare: &str) -> Result<&str, String> {
    let what = "client-first-message";
    let mut attributes = bare.split(',');
    let first = attributes.next();
    if first.is_some_and(|a| a.starts_with("m=")) {
        return Err("client requires an unsupported SCRAM extension (\"m=\")".to_string());
    }
    attribute(first, 'n', what)?;
    let nonce = attribute(attributes.next(), 'r', what)?;
    check_nonce(nonce, what)?;
    check_extensions(attributes, what)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_secret() -> ScramSecret {
        ScramSecret::from_password("pencil", &decode_base64(RFC_SALT).unwrap(), 4096)
    }

    fn secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, b"pgmulti test salt", 64)
    }

    fn password(p: &str) -> ScramCredentials {
        ScramCredentials::Password(p.to_string())
    }

    /// Runs a whole exchange; the first error from either side wins.
    fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<(), String> {
        let server_first = server.client_first(&client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        client.server_final(&server_final)
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn server_reproduces_rfc_7677() {
        let mut server = ScramServer::new(rfc_secret(), Some(RFC_SERVER_NONCE.to_string()));
        let server_first = server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(text(server_first), RFC_SERVER_FIRST);
        assert_eq!(server.client_key(), None);
        let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(text(server_final), RFC_SERVER_FINAL);
        let client_key = server.client_key().unwrap();
        assert_eq!(sha256(&client_key), rfc_secret().stored_key);
    }

    #[test]
    fn client_reproduces_rfc_7677() {
        let mut client = ScramClient::new(password("pencil"), Some(RFC_CLIENT_NONCE.into()));
        client.user = "user".to_string();
        assert_eq!(text(client.client_first()), RFC_CLIENT_FIRST);
        let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(text(client_final), RFC_CLIENT_FINAL);
        client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn postgresql_clients_send_an_empty_user_name() {
        let mut client = ScramClient::new(password("pencil"), Some(RFC_CLIENT_NONCE.into()));
        assert_eq!(text(client.client_first()), "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        let mut server = ScramServer::new(rfc_secret(), Some(RFC_SERVER_NONCE.into()));
        assert_eq!(exchange(&mut client, &mut server), Ok(()));
    }

    #[test]
    fn round_trip_with_random_nonces() {
        let mut client = ScramClient::new(password("secret"), None);
        let mut server = ScramServer::new(secret("secret"), None);
        assert_eq!(exchange(&mut client, &mut server), Ok(()));
        assert!(server.client_key().is_some());

        let mut client = ScramClient::new(password("plain in auth_file"), None);
        let mut server =
            ScramServer::new(ScramSecret::with_random_salt("plain in auth_file"), None);
        assert_eq!(exchange(&mut client, &mut server), Ok(()));

        let a = ScramClient::new(password("x"), None).client_nonce;
        let b = ScramClient::new(password("x"), None).client_nonce;
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn wrong_password_fails() {
        let mut client = ScramClient::new(password("wrong"), None);
        let mut server = ScramServer::new(secret("secret"), None);
        assert_eq!(
            exchange(&mut client, &mut server),
            Err("password authentication failed".to_string())
        );
        assert_eq!(server.client_key(), None);
        // The exchange is over: a retry on the same server is refused.
        assert!(server.client_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn tampered_nonces_fail() {
        // The client repeats a different nonce in client-final.
        let mut client = ScramClient::new(password("secret"), Some("abc".into()));
        let mut server = ScramServer::new(secret("secret"), Some("XYZ".into()));
        let server_first = server.client_first(&client.client_first()).unwrap();
        let client_final = text(client.server_first(&server_first).unwrap());
        let tampered = client_final.replace("r=abcXYZ", "r=abcXYW");
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(err.contains("nonce mismatch"), "{err}");
        assert_eq!(server.client_key(), None);

        // The server answers with a nonce that does not extend the client's.
        for server_first in [
            "r=abXYZ,s=c2FsdA==,i=4096",
            "r=abc,s=c2FsdA==,i=4096",
            "r=Xabc,s=c2FsdA==,i=4096",
            "r=abc\u{7f},s=c2FsdA==,i=4096",
        ] {
            let mut client = ScramClient::new(password("secret"), Some("abc".into()));
            client.client_first();
            let err = client.server_first(server_first.as_bytes()).unwrap_err();
            assert!(err.contains("nonce"), "{server_first}: {err}");
        }
    }

    #[test]
    fn captured_keys_log_in_without_the_password() {
        let verifier = secret("only the client knows this");
        let mut client = ScramClient::new(password("only the client knows this"), None);
        let mut server = ScramServer::new(verifier.clone(), None);
        exchange(&mut client, &mut server).unwrap();
        let keys = ScramCredentials::Keys {
            client_key: server.client_key().unwrap(),
            server_key: verifier.server_key,
        };

        // A node with the same verifier accepts the keys, again and again.
        for _ in 0..2 {
            let mut node = ScramServer::new(verifier.clone(), None);
            let mut pgmulti = ScramClient::new(keys.clone(), None);
            assert_eq!(exchange(&mut pgmulti, &mut node), Ok(()));
        }
        // A node whose verifier was made with another salt does not.
        let other = ScramSecret::from_password("only the client knows this", b"other salt", 64);
        let mut node = ScramServer::new(other, None);
        let mut pgmulti = ScramClient::new(keys, None);
        assert!(exchange(&mut pgmulti, &mut node).is_err());
    }

    #[test]
    fn wrong_server_signature_and_server_errors_fail() {
        for server_final in [
            "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            "v=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            "e=invalid-proof",
        ] {
            let mut client = ScramClient::new(password("pencil"), Some(RFC_CLIENT_NONCE.into()));
            client.user = "user".to_string();
            client.client_first();
            client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
            let err = client.server_final(server_final.as_bytes()).unwrap_err();
            assert!(!err.is_empty());
            if server_final == "e=invalid-proof" {
                assert_eq!(err, "server rejected SCRAM authentication: invalid-proof");
            }
        }
        // A server that knows only a different password cannot prove itself.
        let mut client = ScramClient::new(password("pencil"), None);
        let mut impostor = ScramServer::new(secret("pencil"), None);
        let server_first = impostor.client_first(&client.client_first()).unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        let genuine = impostor.client_final(&client_final).unwrap();
        let mut forged = genuine.clone();
        forged[5] ^= 1;
        let err = client.server_final(&forged).unwrap_err();
        assert!(
            err.contains("server signature") || err.contains("base64"),
            "{err}"
        );
    }

    #[test]
    fn gs2_headers() {
        // "y,," is fine because the server offers no channel binding; c= must repeat it.
        let mut server = ScramServer::new(rfc_secret(), Some(RFC_SERVER_NONCE.into()));
        server.client_first(b"y,,n=,r=abc").unwrap();
        let mut client = ScramClient::new(password("pencil"), Some("abc".into()));
        client.client_first();
        // ScramClient always says "n,,", so its c=biws does not match this server's "y,,".
        let server_first = format!("r=abc{RFC_SERVER_NONCE},s={RFC_SALT},i=4096");
        let client_final = text(client.server_first(server_first.as_bytes()).unwrap());
        let err = server.client_final(client_final.as_bytes()).unwrap_err();
        assert!(err.contains("channel binding"), "{err}");

        let refused = [
            ("p=tls-server-end-point,,n=,r=abc", "channel binding"),
            ("n,a=alice,n=,r=abc", "authorization identity"),
            ("n,,m=ext,n=,r=abc", "extension"),
            ("x,,n=,r=abc", "gs2 header"),
            ("n,n=,r=abc", "gs2 header"),
            ("n,,r=abc", "\"n=\""),
            ("n,,n=", "\"r=\""),
            ("n,,n=,r=", "empty nonce"),
            ("n,,n=,r=a b", "non-printable"),
            ("n,,n=,r=abc,junk", "garbage"),
            ("n,,n=,r=abc,", "garbage"),
        ];
        for (client_first, want) in refused {
            let mut server = ScramServer::new(rfc_secret(), None);
            let err = server.client_first(client_first.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{client_first}: {err}");
        }
        let mut server = ScramServer::new(rfc_secret(), None);
        assert!(server.client_first(b"n,,n=user,r=abc,x=ext").is_ok());
    }

    #[test]
    fn server_first_is_checked() {
        let bad = [
            ("m=ext,r=abcd,s=c2FsdA==,i=4096", "extension"),
            ("r=abcd,s=,i=4096", "empty salt"),
            ("r=abcd,s=c2Fsd,i=4096", "salt"),
            ("r=abcd,s=c2FsdA==,i=0", "at least 1"),
            ("r=abcd,s=c2FsdA==,i=-1", "not a number"),
            ("r=abcd,s=c2FsdA==,i=+5", "not a number"),
            ("r=abcd,s=c2FsdA==,i=", "not a number"),
            ("r=abcd,s=c2FsdA==,i=2147483648", "above"),
            ("r=abcd,s=c2FsdA==,i=99999999999999999999", "above"),
            ("r=abcd,s=c2FsdA==", "\"i=\""),
            ("r=abcd,i=4096,s=c2FsdA==", "\"s=\""),
            ("s=c2FsdA==,r=abcd,i=4096", "\"r=\""),
            ("r=abcd,s=c2FsdA==,i=1,oops", "garbage"),
            ("e=other-error", "\"r=\""),
        ];
        for (server_first, want) in bad {
            let mut client = ScramClient::new(password("pencil"), Some("abc".into()));
            client.client_first();
            let err = client.server_first(server_first.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{server_first}: {err}");
        }
    }

    #[test]
    fn messages_out_of_order_fail() {
        let mut server = ScramServer::new(rfc_secret(), None);
        assert!(server.client_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
        assert!(
            server.client_first(RFC_CLIENT_FIRST.as_bytes()).is_err(),
            "failed is final"
        );

        let mut server = ScramServer::new(rfc_secret(), None);
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert!(server.client_first(RFC_CLIENT_FIRST.as_bytes()).is_err());

        let mut client = ScramClient::new(password("pencil"), None);
        assert!(client.server_first(RFC_SERVER_FIRST.as_bytes()).is_err());
        assert!(client.server_final(RFC_SERVER_FINAL.as_bytes()).is_err());
        let mut client = ScramClient::new(password("pencil"), Some(RFC_CLIENT_NONCE.into()));
        client.client_first();
        assert!(client.server_final(RFC_SERVER_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn mock_server_is_stable_per_user_and_never_authenticates() {
        let salt_of = |user: &str| {
            let mut server = ScramServer::mock(user, b"process secret");
            let server_first = text(server.client_first(b"n,,n=,r=abc").unwrap());
            let (_nonce, salt) = server_first.split_once(",s=").unwrap();
            salt.to_string()
        };
        assert_eq!(salt_of("ghost"), salt_of("ghost"));
        assert_ne!(salt_of("ghost"), salt_of("phantom"));
        assert!(salt_of("ghost").ends_with(",i=4096"));

        let mut client = ScramClient::new(password(""), None);
        let mut server = ScramServer::mock("ghost", b"process secret");
        assert_eq!(
            exchange(&mut client, &mut server),
            Err("password authentication failed".to_string())
        );
    }

    #[test]
    fn a_node_asking_for_too_many_iterations_is_refused() {
        let mut client = ScramClient::new(password("x"), Some("abcdefghijklmnopqrstuvwx".into()));
        client.client_first();
        let first = format!(
            "r=abcdefghijklmnopqrstuvwxSERVER,s={},i=2147483647",
            encode_base64(b"salt")
        );
        let e = client.server_first(first.as_bytes()).unwrap_err();
        assert!(e.contains("2147483647 SCRAM iterations"), "{e}");
    }

    #[test]
    fn hmac_and_hi_agree_with_openssl() {
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::sign::Signer;

        // OpenSSL 3 refuses an empty HMAC key, so that one is checked against a known value.
        let empty: String = hmac(b"", b"").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            empty,
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
        for key_len in [1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
            let message = b"AuthMessage";
            let pkey = PKey::hmac(&key).unwrap();
            let mut signer = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
            signer.update(message).unwrap();
            assert_eq!(hmac(&key, message).to_vec(), signer.sign_to_vec().unwrap());

            for iterations in [1, 2, 4096] {
                let mut expected = [0u8; 32];
                openssl::pkcs5::pbkdf2_hmac(
                    &key,
                    b"salt",
                    iterations as usize,
                    MessageDigest::sha256(),
                    &mut expected,
                )
                .unwrap();
                assert_eq!(salted_password(&key, b"salt", iterations), expected);
                assert_eq!(salted_password_by_hand(&key, b"salt", iterations), expected);
            }
        }
    }

    #[test]
    fn credentials_debug_is_masked() {
        let shown = format!(
            "{:?} {:?}",
            password("hunter2"),
            ScramCredentials::Keys {
                client_key: [0xab; 32],
                server_key: [0xcd; 32]
            }
        );
        assert_eq!(
            shown,
            "ScramCredentials::Password(<masked>) ScramCredentials::Keys(<masked>)"
        );
        let mut server = ScramServer::new(rfc_secret(), Some(RFC_SERVER_NONCE.into()));
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(
            format!("{server:?}"),
            "ScramServer(awaiting client-final-message)"
        );
        let client = ScramClient::new(password("hunter2"), None);
        assert_eq!(format!("{client:?}"), "ScramClient(initial)");
    }

    /// Garbage, truncated and corrupted messages are refused with an error, never a panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Derive the RFC's keys once: PBKDF2 per attempt would make this test slow.
        let rfc_secret = rfc_secret();
        let salted = salted_password(b"pencil", &rfc_secret.salt, rfc_secret.iterations);
        let rfc_keys = ScramCredentials::Keys {
            client_key: client_key(&salted),
            server_key: server_key(&salted),
        };
        let fresh_server = || ScramServer::new(rfc_secret.clone(), Some(RFC_SERVER_NONCE.into()));
        let waiting_server = || {
            let mut server = fresh_server();
            server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            server
        };
        let fresh_client = || {
            let mut client = ScramClient::new(rfc_keys.clone(), Some(RFC_CLIENT_NONCE.into()));
            client.user = "user".to_string();
            client.client_first();
            client
        };
        let waiting_client = || {
            let mut client = fresh_client();
            client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
            client
        };

        // Random bytes, biased towards the characters SCRAM messages are made of.
        let alphabet = b"nyrpcsivem=,aAbB+/0123456789\0\xff\xc3";
        for _ in 0..3000 {
            let len = (next() % 64) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = fresh_server().client_first(&msg);
            assert!(waiting_server().client_final(&msg).is_err());
            let _ = fresh_client().server_first(&msg);
            assert!(waiting_client().server_final(&msg).is_err());
        }

        // Every truncation of each valid message.
        for n in 0..RFC_CLIENT_FIRST.len() {
            let _ = fresh_server().client_first(&RFC_CLIENT_FIRST.as_bytes()[..n]);
        }
        for n in 0..RFC_SERVER_FIRST.len() {
            let _ = fresh_client().server_first(&RFC_SERVER_FIRST.as_bytes()[..n]);
        }
        for n in 0..RFC_CLIENT_FINAL.len() {
            let mut server = waiting_server();
            assert!(server
                .client_final(&RFC_CLIENT_FINAL.as_bytes()[..n])
                .is_err());
            assert_eq!(server.client_key(), None);
        }
        for n in 0..RFC_SERVER_FINAL.len() {
            assert!(waiting_client()
                .server_final(&RFC_SERVER_FINAL.as_bytes()[..n])
                .is_err());
        }

        // Every single-byte corruption of the final messages is refused.
        for i in 0..RFC_CLIENT_FINAL.len() {
            for replacement in [b'A', b',', b'=', 0, 0xff] {
                let mut msg = RFC_CLIENT_FINAL.as_bytes().to_vec();
                if msg[i] == replacement {
                    continue;
                }
                msg[i] = replacement;
                let mut server = waiting_server();
                assert!(server.client_final(&msg).is_err(), "accepted {msg:?}");
                assert_eq!(server.client_key(), None);
            }
        }
        for i in 0..RFC_SERVER_FINAL.len() {
            for replacement in [b'A', b',', b'=', b'e', 0, 0xff] {
                let mut msg = RFC_SERVER_FINAL.as_bytes().to_vec();
                if msg[i] == replacement {
                    continue;
                }
                msg[i] = replacement;
                assert!(
                    waiting_client().server_final(&msg).is_err(),
                    "accepted {msg:?}"
                );
            }
        }
    }
}

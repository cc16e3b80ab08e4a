//! TLS contexts: the acceptor for clients (`ssl = on`) and the connector for nodes
//! (`backend_sslmode`). Built once at start-up (and on reload); a session asks for one `Ssl`
//! per connection. No I/O happens here.

use std::path::Path;

use openssl::ssl::{
    Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslMode as OpenSslMode, SslVerifyMode,
};

use crate::config::SslMode;

pub struct ClientTls {
    acceptor: SslAcceptor,
}

impl ClientTls {
    pub fn new(cert: &Path, key: &Path) -> Result<ClientTls, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| format!("TLS setup: {e}"))?;
        b.set_certificate_chain_file(cert)
            .map_err(|e| format!("ssl_cert_file {}: {e}", cert.display()))?;
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| format!("ssl_key_file {}: {e}", key.display()))?;
        b.check_private_key().map_err(|e| {
            format!(
                "ssl_key_file {} does not match the certificate: {e}",
                key.display()
            )
        })?;
        b.set_mode(OpenSslMode::ENABLE_PARTIAL_WRITE | OpenSslMode::ACCEPT_MOVING_WRITE_BUFFER);
        Ok(ClientTls {
            acceptor: b.build(),
        })
    }

    /// A server-side `Ssl` for one client connection.
    pub fn session(&self) -> Result<Ssl, String> {
        let mut ssl = Ssl::new(self.acceptor.context()).map_err(|e| e.to_string())?;
        ssl.set_accept_state();
        Ok(ssl)
    }
}

#[derive(Clone)]
pub struct NodeTls {
    connector: SslConnector,
    mode: SslMode,
}

impl NodeTls {
    pub fn new(mode: SslMode, ca_file: Option<&Path>) -> Result<NodeTls, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| format!("TLS setup: {e}"))?;
        match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let ca = ca_file
                    .ok_or("backend_sslmode verify-ca/verify-full needs backend_ssl_ca_file")?;
                b.set_ca_file(ca)
                    .map_err(|e| format!("backend_ssl_ca_file {}: {e}", ca.display()))?;
                b.set_verify(SslVerifyMode::PEER);
            }
            _ => b.set_verify(SslVerifyMode::NONE),
        }
        b.set_mode(OpenSslMode::ENABLE_PARTIAL_WRITE | OpenSslMode::ACCEPT_MOVING_WRITE_BUFFER);
        Ok(NodeTls {
            connector: b.build(),
            mode,
        })
    }

    /// Whether pgmulti sends an SSLRequest to nodes at all.
    pub fn wanted(&self) -> bool {
        !matches!(self.mode, SslMode::Disable | SslMode::Allow)
    }

    /// Whether a node answering 'N' to the SSLRequest is a failure.
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// A client-side `Ssl` for one node connection; `host` is checked in verify-full.
    pub fn session(&self, host: &str) -> Result<Ssl, String> {
        let mut cfg = self.connector.configure().map_err(|e| e.to_string())?;
        cfg.set_verify_hostname(self.mode == SslMode::VerifyFull);
        if self.mode != SslMode::VerifyFull {
            cfg.set_use_server_name_indication(false);
        }
        let mut ssl = cfg.into_ssl(host).map_err(|e| e.to_string())?;
        ssl.set_connect_state();
        Ok(ssl)
    }
}

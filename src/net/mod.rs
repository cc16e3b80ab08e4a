//! Networking below the protocol: bounded buffers, nonblocking plain/TLS transports, TLS
//! contexts and listeners. Nothing here knows PostgreSQL messages.

pub mod buffer;
pub mod endpoint;
pub mod listener;
pub mod tls;
pub mod transport;

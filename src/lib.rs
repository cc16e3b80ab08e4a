//! pgmulti: PostgreSQL middleware. One mio event loop relays (and, in replication mode,
//! replicates) the PostgreSQL v3 protocol between clients and a set of ordinary nodes.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod reactor;
pub mod replication;
pub mod session;
pub mod timestamp;
pub mod trace;

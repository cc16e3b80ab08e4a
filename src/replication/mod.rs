//! Statement replication: deciding where a client's SQL must run and checking that the
//! nodes agree. Pure logic; the session (`session/replicate/`) carries it out.
//!
//! `lexer` turns SQL text into borrowed tokens and splits a query string into statements;
//! `classify` says what one statement is (read, write, transaction control, session state,
//! DDL, …) and which non-deterministic constructs it contains; `request` classifies a whole
//! Query and rewrites non-deterministic values into literals; `catalog` reads what the lead's catalog says of a table
//! (defaults, key, triggers); `defaults` writes non-deterministic column defaults into INSERTs;
//! `effects` replicates UPDATE/DELETE/INSERT … SELECT by what the lead did (`effect_runs`
//! follows one request's such writes through the lead's answers); `plan` turns a request and the
//! transaction state into phases (lead first, replicas after, commit order); `compare` votes
//! over the nodes' answers; `extended` prepares extended-protocol batches (Parse/Bind up to
//! Sync) the same way.

pub mod catalog;
pub mod classify;
pub mod compare;
pub mod defaults;
pub mod effect_runs;
pub mod effects;
pub mod extended;
pub mod large_objects;
pub mod lexer;
pub mod plan;
pub mod position;
pub mod request;
pub mod two_phase;

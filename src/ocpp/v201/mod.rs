//! OCPP 2.0.1: what a 2.0.1 charger sends, decoded and validated (pure), and what the
//! central system answers to it.
//!
//! - [`messages`]: decoding a 2.0.1 charger's requests into [`messages::Request`] (pure).
//! - [`handler`]: the answers, via the store; the same session core as 1.6.
//! - [`schema`]: the official 2.0.1 JSON schemas and their validator (pure).

pub mod handler;
pub mod messages;
pub mod schema;

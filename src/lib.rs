//! chargesite: the site agent for an EV charging site.
//!
//! # Layout
//! - [`config`]: the TOML config file, typed and validated (CONTRACT §2).
//! - [`agent`]: process wiring: store, OCPP server, gateway hardware, systemd, shutdown.
//! - [`ocpp`]: the OCPP-J 1.6 central system chargers connect to: framing and message
//!   decoding (pure), the energy register (pure), the handshake decision and each
//!   connection's outbound CALL state (pure), the per-request handler, the registry of
//!   connected chargers with outbound CALLs, and the WebSocket server.
//! - [`store`]: the one thread that owns the SQLite database; migrations; group commit;
//!   the ops that write each fact together with its upstream outbox events.
//! - [`uplink`]: store-and-forward to the BPP over MQTT: the outbox driver, commands,
//!   retained state and connectors, live snapshots.
//! - `broker`, `demo` (feature `embedded-broker`, off in the gateway build): an embedded
//!   MQTT broker and the one-command demo.
//! - [`auth`]: OTP and id-tag decisions (pure).
//! - [`billing`]: tariffs, running cost, budgets and settlement (pure, integer money).
//! - [`password`]: argon2 hashes of charger passwords.
//! - [`sim`]: simulated OCPP 1.6 chargers (`chargesite simulate`) and their charging model.
//! - [`time`]: the contract's timestamp format and charger clock checks (pure).
//!
//! Hardware traits (status LED, watchdog, link state, sd_notify) live in the
//! `chargesite-hal` crate beside this one.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod auth;
pub mod billing;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod config;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod ocpp;
pub mod password;
pub mod sim;
pub mod store;
pub mod time;
pub mod uplink;

//! chargesite: the site agent for an EV charging site.
//!
//! # Layout
//! Arrows run one way: process wiring -> drivers -> pure cores -> types; `.ci/layers.py`
//! fails CI on an upward import.
//!
//! Process wiring:
//! - [`agent`]: the daemon: store, OCPP server, uplink, gateway hardware (through the hal
//!   traits), systemd, housekeeping, orderly shutdown.
//! - `demo`, `broker` (feature `embedded-broker`, off in the gateway build): the one-command
//!   demo and its embedded MQTT broker.
//! - [`sim`]: simulated OCPP 1.6 and 2.0.1 chargers (`chargesite simulate`), their
//!   charging model and each version's payloads.
//!
//! Drivers (I/O only; they call the pure rules below):
//! - [`uplink`]: store-and-forward to the BPP over MQTT: the MQTT driver, commands,
//!   retained state and connectors, live snapshots.
//! - [`ocpp`]: the OCPP-J central system chargers connect to: the WebSocket server and
//!   per-connection loop, the per-request handler, the registry of connected chargers and
//!   typed outbound CALLs; its pure parts are framing, message decoding, meter decoding,
//!   the handshake decision and the RPC state.
//! - [`status`]: the local status server (`[status] listen` and the local API's Unix
//!   socket): `/api/v1/status`, `/metrics`, the status page's route; its pure parts are
//!   routing, Basic auth with a verified cache, the status body and its text summary; and
//!   the client `chargesite status` asks it with.
//! - [`store`]: the one thread that owns the SQLite database, its typed handle (one method
//!   per operation), group commit, migrations; each op loads, asks a pure rule, writes.
//!
//! Pure cores (state, input and `now` in; decisions out):
//! - [`session`]: one charging session's rules for every OCPP version: start flags, the
//!   energy register, accrual and the budget stop, stop matching, the final bill, which
//!   link broke a session and what a crash of the agent left open.
//! - [`events`]: the upstream event bodies (CONTRACT §4) as typed values.
//! - [`auth`]: OTP and id-tag decisions. [`billing`]: tariffs, cost, budgets, settlement
//!   (integer money). [`notice`]: what the OCPP side tells the uplink. [`power`]: the
//!   site power limit shared among running sessions (the fairness rule) and the numbers
//!   each charger's profile carries. [`reservation`]: reservations with a grace period:
//!   when a connector is held, who may start on it, how it ends.
//!
//! Types: [`config`] (the TOML file, typed and validated), [`reading`] (a meter sample in
//! the contract's units), [`time`] (timestamps, charger clock checks), [`password`]
//! (argon2 hashes of charger passwords), [`metrics`] (what the drivers record for
//! `/metrics` and the status page).
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
pub mod events;
pub mod metrics;
pub mod notice;
pub mod ocpp;
pub mod password;
pub mod pki;
pub mod power;
pub mod reading;
pub mod reservation;
pub mod session;
pub mod sim;
pub mod status;
pub mod store;
pub mod time;
pub mod uplink;

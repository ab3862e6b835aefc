//! The OCPP side: chargers connect here.
//!
//! - [`frame`]: OCPP-J framing and CALLERROR codes (pure).
//! - [`messages`]: decoding and validating a charger's requests (pure).
//! - [`meter`]: meter samples and the energy register (pure).
//! - [`handshake`]: the WebSocket handshake's decision: path, Basic auth, subprotocol (pure).
//! - [`rpc`]: one connection's outbound CALL: ids, the one outstanding CALL, its deadline
//!   (pure).
//! - [`handler`]: what the central system answers to each request, via the store.
//! - [`registry`]: the connected chargers and outbound CALLs to them.
//! - [`commands`]: typed outbound commands (RemoteStart/Stop, Reset, …) over the registry.
//! - [`local_list`]: the SendLocalList CALLs that put fleet cards on a charger (pure).
//! - [`reserve`]: the reservation driver: ReserveNow and CancelReservation when due.
//! - [`server`]: the WebSocket listener and per-connection driver.
//! - [`smart`]: the site power limit's driver: charging profiles for every charger's share.
//! - [`v201`]: OCPP 2.0.1 requests and answers, beside 1.6.

pub mod binding;
pub mod commands;
pub mod frame;
pub mod guard;
pub mod handler;
pub mod handshake;
pub mod local_list;
pub mod messages;
pub mod meter;
pub mod registry;
pub mod reserve;
pub mod rpc;
pub mod server;
pub mod smart;
pub mod tls;
pub mod v201;

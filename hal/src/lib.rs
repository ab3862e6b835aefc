//! # chargesite-hal: what the agent touches on a gateway
//!
//! Small traits for the few pieces of hardware and host plumbing the site agent drives, so
//! the agent's logic can be tested without a board. Every error is a plain
//! [`std::io::Error`]: each implementation is a thin wrapper over a file or a socket, and the
//! caller only needs to log the failure and carry on.
//!
//! ## Layout
//! - this file: the traits ([`Indicator`], [`Watchdog`], [`LinkState`]) and [`IndicatorState`].
//! - [`linux`] (feature `linux`, default on): sysfs LED ([`linux::SysfsLed`]), `/dev/watchdog`
//!   ([`linux::DevWatchdog`]) and interface operstate ([`linux::SysfsOperstate`]).
//! - [`fake`]: in-memory stand-ins that record what the agent asked for, for tests.
//! - [`systemd`]: `sd_notify` (READY, STOPPING, WATCHDOG, STATUS) over `$NOTIFY_SOCKET`
//!   without libsystemd, and the watchdog ping interval systemd asked for.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod fake;
#[cfg(feature = "linux")]
pub mod linux;
pub mod systemd;

#[cfg(test)]
mod test_support;

/// What the site's status light should say about the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndicatorState {
    /// Uplink connected and the agent is serving chargers.
    Online,
    /// Running, but the uplink to the operator is down.
    Offline,
    /// Something needs a technician's attention.
    Fault,
}

/// A status light (or anything else that can show an [`IndicatorState`]).
pub trait Indicator: Send {
    /// Shows `state`.
    ///
    /// # Errors
    /// Whatever the underlying device write returns.
    fn set(&mut self, state: IndicatorState) -> std::io::Result<()>;
}

/// A hardware watchdog that reboots the board unless it is kicked in time.
pub trait Watchdog: Send {
    /// Resets the hardware timer.
    ///
    /// # Errors
    /// The device write failed, or the watchdog was already disarmed.
    fn kick(&mut self) -> std::io::Result<()>;
    /// Clean shutdown: magic close ('V') so the board does not reboot when the daemon stops on purpose.
    ///
    /// # Errors
    /// The device write failed; the board may then reboot when the timer runs out.
    fn disarm(&mut self) -> std::io::Result<()>;
}

/// Whether the uplink's network interface is usable.
pub trait LinkState: Send {
    /// true when the interface's operstate is "up" (treat "unknown" as up: many USB modems / ppp report it)
    ///
    /// # Errors
    /// The state could not be read.
    fn is_up(&self) -> std::io::Result<bool>;
}

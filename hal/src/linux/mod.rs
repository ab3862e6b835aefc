//! The real gateway: each type wraps one kernel file. [`SysfsLed`] drives a status LED
//! through `/sys/class/leds/<name>`, [`DevWatchdog`] feeds `/dev/watchdog`, and
//! [`SysfsOperstate`] reads `/sys/class/net/<iface>/operstate`. Nothing here needs an ioctl
//! or a C library, only reads and writes; errors carry the path that failed so a log line
//! is enough to find the culprit on the board.

mod led;
mod operstate;
mod watchdog;

pub use led::SysfsLed;
pub use operstate::SysfsOperstate;
pub use watchdog::DevWatchdog;

use std::io;
use std::path::Path;

/// Prefixes `err` with `path`, keeping its kind, so callers can still match on
/// [`io::ErrorKind`] while the message says which file was involved.
fn at_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

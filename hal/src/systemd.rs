//! Talking to systemd as a `Type=notify` service without linking libsystemd: the
//! `sd_notify` protocol is one datagram of `KEY=value` lines sent to the Unix socket named
//! in `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@').
//!
//! Every function answers `Ok(false)` when `$NOTIFY_SOCKET` is unset, so the daemon runs the
//! same way from a shell or a test as under systemd. Sockets other than path and abstract
//! (e.g. `vsock:` used for VMs) are refused as `Unsupported`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Sends `state` (one or more `KEY=value` lines) to systemd.
///
/// Returns `Ok(false)` without doing anything when `$NOTIFY_SOCKET` is unset or empty (not
/// started by systemd), `Ok(true)` once the datagram is sent.
///
/// # Errors
/// The address in `$NOTIFY_SOCKET` is of an unsupported kind, or the send failed (e.g. no
/// one listens there any more).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) if !addr.is_empty() => notify_to(&addr, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Tells systemd start-up is complete (`READY=1`): send it once the OCPP port is listening.
///
/// # Errors
/// See [`notify`].
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Tells systemd a config reload has begun (`RELOADING=1`); [`ready`] ends it.
///
/// # Errors
/// See [`notify`].
pub fn reloading() -> io::Result<bool> {
    notify("RELOADING=1")
}

/// Tells systemd a deliberate shutdown has begun (`STOPPING=1`).
///
/// # Errors
/// See [`notify`].
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// Keep-alive ping for the unit's `WatchdogSec=` (`WATCHDOG=1`).
///
/// # Errors
/// See [`notify`].
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// Sets the one-line status `systemctl status` shows (`STATUS=...`). Line breaks in `text`
/// become spaces: a newline would start a new assignment in the datagram.
///
/// # Errors
/// See [`notify`].
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// From WATCHDOG_USEC (and WATCHDOG_PID if set: only when it equals our pid). The agent pings at half of it.
///
/// `None` when the unit has no `WatchdogSec=`, the variables do not parse, or they were
/// meant for another process (inherited by a child of the main process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Whether our stderr is the journal's stream socket, i.e. what systemd connected when it
/// set `$JOURNAL_STREAM` (`DEVICE:INODE` of that socket, in decimal). journald stamps every
/// line itself, so a logger can leave its own timestamp out. Compared with stderr's own
/// device and inode, as systemd.exec(5) advises: a child that inherited the variable but
/// had stderr redirected (a shell pipe, a file) is not writing to the journal.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => journal_stream_is(&value.to_string_lossy(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

fn status_message(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `state` as one datagram to the notify socket `addr`, in `$NOTIFY_SOCKET` syntax.
fn notify_to(addr: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let msg = state.as_bytes();
    let bytes = addr.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(&socket, name, msg)?
    } else if bytes.starts_with(b"/") {
        socket.send_to(msg, Path::new(addr))?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("NOTIFY_SOCKET={addr:?} is neither a path nor an abstract socket"),
        ));
    };
    if sent == msg.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "sd_notify datagram truncated: sent {sent} of {} bytes",
                msg.len()
            ),
        ))
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(msg, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_socket: &UnixDatagram, _name: &[u8], _msg: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract Unix sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// Environment variables are process-wide and tests run on parallel threads: every test
    /// that sets or reads NOTIFY_SOCKET / WATCHDOG_* holds this lock.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn env_lock() -> MutexGuard<'static, ()> {
        ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A bound datagram socket in a temp dir, standing in for systemd's notify socket.
    fn listener() -> (TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_the_state_as_one_datagram() {
        let (_dir, path, socket) = listener();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=listening").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=listening");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_addresses_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("chargesite-hal-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn an_address_that_is_neither_path_nor_abstract_is_unsupported() {
        let err = notify_to(OsStr::new("vsock:2:1234"), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error() {
        let dir = TempDir::new("notify-gone");
        let path = dir.path().join("gone.sock");
        assert!(notify_to(path.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn notify_without_notify_socket_does_nothing_and_says_so() {
        let _env = env_lock();
        let saved = std::env::var_os("NOTIFY_SOCKET");
        std::env::remove_var("NOTIFY_SOCKET");
        let result = ready();
        if let Some(saved) = saved {
            std::env::set_var("NOTIFY_SOCKET", saved);
        }
        assert!(!result.unwrap());
    }

    #[test]
    fn helpers_send_their_assignments_to_notify_socket() {
        let _env = env_lock();
        let (_dir, path, socket) = listener();
        let saved = std::env::var_os("NOTIFY_SOCKET");
        std::env::set_var("NOTIFY_SOCKET", &path);
        let sent = [
            ready(),
            watchdog(),
            status("2 chargers\nMAINPID=1"),
            stopping(),
        ];
        match saved {
            Some(saved) => std::env::set_var("NOTIFY_SOCKET", saved),
            None => std::env::remove_var("NOTIFY_SOCKET"),
        }
        for result in sent {
            assert!(result.unwrap());
        }
        assert_eq!(receive(&socket), "READY=1");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert_eq!(receive(&socket), "STATUS=2 chargers MAINPID=1");
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn watchdog_interval_is_the_full_watchdog_usec() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 42),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn watchdog_interval_for_another_pid_is_ignored() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("41"), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), 42),
            None
        );
    }

    #[test]
    fn missing_zero_or_garbled_watchdog_usec_means_no_watchdog() {
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("30s"), None, 42), None);
    }

    #[test]
    fn watchdog_interval_reads_the_environment_systemd_sets() {
        let _env = env_lock();
        let saved: Vec<_> = ["WATCHDOG_USEC", "WATCHDOG_PID"]
            .map(|k| (k, std::env::var_os(k)))
            .into();
        std::env::set_var("WATCHDOG_USEC", "20000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        let interval = watchdog_interval();
        for (key, value) in saved {
            match value {
                Some(v) => std::env::set_var(key, v),
                None => std::env::remove_var(key),
            }
        }
        assert_eq!(interval, Some(Duration::from_secs(20)));
    }

    #[test]
    fn journal_stream_names_the_device_and_inode_of_stderr() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
    }

    #[test]
    fn a_garbled_journal_stream_is_not_the_journal() {
        for value in ["", "8", "8:", ":12345", "8:12345:1", "x:y", "-8:12345"] {
            assert!(!journal_stream_is(value, 8, 12345), "{value:?}");
        }
    }

    #[test]
    fn status_text_stays_on_one_line() {
        assert_eq!(status_message("a\r\nb"), "STATUS=a  b");
    }
}

//! The board's hardware watchdog through the kernel's `/dev/watchdog` character device.
//!
//! Opening the device starts the timer; any write resets it. Closing it stops the timer only
//! if the last byte written was the magic 'V' (and the driver supports magic close and was
//! not built or loaded with `nowayout`). So a crash, which closes the file without 'V', lets
//! the timer run out and the board reboot, which is the point; a deliberate stop calls
//! [`Watchdog::disarm`] first. Writes only, no ioctl: that is the whole portable interface.
//!
//! Only one process can hold the device. When systemd itself feeds it (`RuntimeWatchdogSec=`
//! in system.conf), [`DevWatchdog::open`] fails with `EBUSY`; rely on systemd's watchdog
//! then.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use super::at_path;
use crate::Watchdog;

/// A [`Watchdog`] backed by a watchdog device such as `/dev/watchdog`.
///
/// Dropping it without [`Watchdog::disarm`] closes the device without the magic byte, so the
/// board reboots when the timer runs out: what a crash should do.
#[derive(Debug)]
pub struct DevWatchdog {
    path: PathBuf,
    /// `None` once disarmed: the device is closed and must not be written again.
    file: Option<File>,
}

impl DevWatchdog {
    /// Opens `path` (normally `/dev/watchdog`) for writing, which arms the hardware timer.
    ///
    /// # Errors
    /// The device does not exist, is not writable by this user, or another process (often
    /// systemd) already holds it (`EBUSY`).
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| at_path(e, &path))?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    fn write_byte(&mut self, byte: u8) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{}: watchdog already disarmed", self.path.display()),
            ));
        };
        file.write_all(&[byte]).map_err(|e| at_path(e, &self.path))
    }
}

impl Watchdog for DevWatchdog {
    fn kick(&mut self) -> io::Result<()> {
        // A NUL is not 'V', so a kick also cancels an earlier magic byte, as the kernel does.
        self.write_byte(b'\0')
    }

    fn disarm(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        // Keep the file open when the write fails: the caller can still kick or retry.
        self.write_byte(b'V')?;
        // Closing right after 'V' is what stops the timer.
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// A plain file standing in for `/dev/watchdog`: each write appends one byte, so the
    /// file's content is the byte stream the driver would have seen.
    fn fake_device() -> (TempDir, PathBuf) {
        let dir = TempDir::new("watchdog");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").unwrap();
        (dir, path)
    }

    #[test]
    fn each_kick_writes_one_byte_that_is_not_the_magic_close() {
        let (_dir, path) = fake_device();
        let mut dog = DevWatchdog::open(&path).unwrap();
        dog.kick().unwrap();
        dog.kick().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0");
    }

    #[test]
    fn disarm_writes_the_magic_v_last_and_closes() {
        let (_dir, path) = fake_device();
        let mut dog = DevWatchdog::open(&path).unwrap();
        dog.kick().unwrap();
        dog.disarm().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0V");
        assert!(dog.file.is_none());
    }

    #[test]
    fn dropping_without_disarm_never_writes_the_magic_close() {
        let (_dir, path) = fake_device();
        let mut dog = DevWatchdog::open(&path).unwrap();
        dog.kick().unwrap();
        drop(dog);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0");
    }

    #[test]
    fn disarming_twice_writes_one_v_and_kicking_afterwards_fails() {
        let (_dir, path) = fake_device();
        let mut dog = DevWatchdog::open(&path).unwrap();
        dog.disarm().unwrap();
        dog.disarm().unwrap();
        let err = dog.kick().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        drop(dog);
        assert_eq!(std::fs::read(&path).unwrap(), b"V");
    }

    #[test]
    fn opening_a_missing_device_names_it_in_the_error() {
        let dir = TempDir::new("no-watchdog");
        let path = dir.path().join("watchdog");
        let err = DevWatchdog::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("watchdog"), "{err}");
    }
}

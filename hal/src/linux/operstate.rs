//! Link state of the uplink interface from `/sys/class/net/<iface>/operstate` (RFC 2863
//! operational state as the kernel reports it).
//!
//! "unknown" counts as up: ppp links, many USB modems and some tun/wireguard drivers never
//! report anything else while they carry traffic. An interface that does not exist counts
//! as down rather than as an error, because ppp and wwan interfaces vanish when the modem
//! drops and come back under the same name.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::at_path;
use crate::LinkState;

/// Where the kernel lists network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// `IFNAMSIZ` minus the terminating NUL.
const MAX_IFACE_LEN: usize = 15;

/// A [`LinkState`] that reads one interface's `operstate` file on every call.
#[derive(Debug, Clone)]
pub struct SysfsOperstate {
    path: PathBuf,
}

impl SysfsOperstate {
    /// Watches `iface` (e.g. `eth0`, `wwan0`, `ppp0`) under `/sys/class/net`.
    ///
    /// # Errors
    /// `InvalidInput` when `iface` is not a name the kernel would accept.
    pub fn new(iface: &str) -> io::Result<Self> {
        Self::with_root(PathBuf::from(SYS_CLASS_NET), iface)
    }

    /// Like [`SysfsOperstate::new`] but with `root` standing in for `/sys/class/net`, for
    /// tests: the file read is `root/<iface>/operstate`.
    ///
    /// # Errors
    /// `InvalidInput` when `iface` is not a name the kernel would accept.
    pub fn with_root(root: PathBuf, iface: &str) -> io::Result<Self> {
        validate_iface(iface)?;
        Ok(Self {
            path: root.join(iface).join("operstate"),
        })
    }
}

impl LinkState for SysfsOperstate {
    fn is_up(&self) -> io::Result<bool> {
        match fs::read_to_string(&self.path) {
            Ok(state) => Ok(matches!(state.trim(), "up" | "unknown")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(at_path(e, &self.path)),
        }
    }
}

/// The kernel's own rule (`dev_valid_name`), which also keeps the name from escaping
/// `root` as a path: 1 to 15 bytes, not "." or "..", no '/', ':' or whitespace.
fn validate_iface(iface: &str) -> io::Result<()> {
    let valid = !iface.is_empty()
        && iface.len() <= MAX_IFACE_LEN
        && iface != "."
        && iface != ".."
        && !iface
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network interface name {iface:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// A directory shaped like `/sys/class/net` with one interface in `state`.
    fn fake_net(iface: &str, state: &str) -> TempDir {
        let root = TempDir::new("net");
        fs::create_dir_all(root.path().join(iface)).unwrap();
        fs::write(root.path().join(iface).join("operstate"), state).unwrap();
        root
    }

    fn is_up(state: &str) -> bool {
        let root = fake_net("wwan0", state);
        SysfsOperstate::with_root(root.path().to_owned(), "wwan0")
            .unwrap()
            .is_up()
            .unwrap()
    }

    #[test]
    fn up_and_unknown_count_as_up() {
        assert!(is_up("up\n"));
        assert!(is_up("unknown\n"));
    }

    #[test]
    fn every_other_operstate_counts_as_down() {
        for state in [
            "down\n",
            "dormant\n",
            "lowerlayerdown\n",
            "notpresent\n",
            "testing\n",
            "",
        ] {
            assert!(!is_up(state), "{state:?}");
        }
    }

    #[test]
    fn each_call_reads_the_current_state() {
        let root = fake_net("eth0", "down\n");
        let link = SysfsOperstate::with_root(root.path().to_owned(), "eth0").unwrap();
        assert!(!link.is_up().unwrap());
        fs::write(root.path().join("eth0/operstate"), "up\n").unwrap();
        assert!(link.is_up().unwrap());
    }

    #[test]
    fn a_vanished_interface_counts_as_down() {
        let root = TempDir::new("net-empty");
        let link = SysfsOperstate::with_root(root.path().to_owned(), "ppp0").unwrap();
        assert!(!link.is_up().unwrap());
    }

    #[test]
    fn names_the_kernel_would_reject_are_invalid_input() {
        let too_long = "a".repeat(16);
        for bad in [
            "", ".", "..", "../eth0", "eth0/", "eth0:1", "eth 0", &too_long,
        ] {
            let err = SysfsOperstate::new(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn fifteen_character_names_are_accepted() {
        assert!(SysfsOperstate::new(&"a".repeat(15)).is_ok());
        assert!(SysfsOperstate::new("wlan0.100").is_ok());
    }
}

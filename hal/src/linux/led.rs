//! A status LED driven through the kernel's LED class in sysfs (`/sys/class/leds/<name>`).
//!
//! Blinking is left to the kernel's `timer` trigger, so the light keeps its pattern while the
//! agent is busy or stalled; the agent only writes when the state changes. When the kernel
//! has no `timer` trigger (not built, module not loaded) the light falls back to steady
//! on/off, which is poorer but never wrong about "something is lit".

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use super::at_path;
use crate::{Indicator, IndicatorState};

/// Slow blink for [`IndicatorState::Offline`], in milliseconds on and off.
const OFFLINE_BLINK_MS: u32 = 1000;
/// Fast blink for [`IndicatorState::Fault`], in milliseconds on and off.
const FAULT_BLINK_MS: u32 = 100;

/// An [`Indicator`] backed by one LED class device, e.g. `/sys/class/leds/status:green`.
#[derive(Debug)]
pub struct SysfsLed {
    dir: PathBuf,
    max_brightness: u32,
    /// false when the kernel was built without LED triggers (no `trigger` file).
    has_trigger_file: bool,
    /// Read once at open: a `timer` module loaded later is not noticed until reopen.
    has_timer: bool,
    /// What the files currently say, as far as we know; `None` after a failed write so the
    /// next [`Indicator::set`] writes everything again.
    shown: Option<IndicatorState>,
}

impl SysfsLed {
    /// Opens the LED class directory `dir` (e.g. `/sys/class/leds/status:green`) and reads
    /// its `max_brightness` (1 when missing or unreadable) and available triggers. The LED
    /// itself is not touched until the first [`Indicator::set`].
    ///
    /// # Errors
    /// `dir` has no `brightness` file (not an LED), or the `trigger` file exists but cannot
    /// be read.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let brightness = dir.join("brightness");
        fs::metadata(&brightness).map_err(|e| at_path(e, &brightness))?;

        // Some drivers report 0 or garbage; 1 is the value every LED accepts as "on".
        let max_brightness = fs::read_to_string(dir.join("max_brightness"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&m| m > 0)
            .unwrap_or(1);

        let trigger = dir.join("trigger");
        let (has_trigger_file, has_timer) = match fs::read_to_string(&trigger) {
            Ok(list) => (true, trigger_listed(&list, "timer")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (false, false),
            Err(e) => return Err(at_path(e, &trigger)),
        };

        Ok(Self {
            dir,
            max_brightness,
            has_trigger_file,
            has_timer,
            shown: None,
        })
    }

    fn write_attr(&self, name: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        // No `create`: sysfs attributes exist or the kernel does not offer them, and a
        // missing `delay_on` after selecting `timer` is an error worth reporting.
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| at_path(e, &path))
    }

    fn steady(&self, on: bool) -> io::Result<()> {
        if self.has_trigger_file {
            self.write_attr("trigger", "none")?;
        }
        let level = if on { self.max_brightness } else { 0 };
        self.write_attr("brightness", &level.to_string())
    }

    fn blink(&self, period_ms: u32) -> io::Result<()> {
        // Selecting `timer` again would make the kernel recreate delay_on/delay_off (and
        // reset them to 500 ms), so only select it when coming from a steady state.
        let timer_selected = matches!(
            self.shown,
            Some(IndicatorState::Offline | IndicatorState::Fault)
        );
        if !timer_selected {
            self.write_attr("trigger", "timer")?;
        }
        self.write_attr("delay_on", &period_ms.to_string())?;
        self.write_attr("delay_off", &period_ms.to_string())
    }
}

impl Indicator for SysfsLed {
    fn set(&mut self, state: IndicatorState) -> io::Result<()> {
        if self.shown == Some(state) {
            return Ok(());
        }
        let result = match state {
            IndicatorState::Online => self.steady(true),
            IndicatorState::Offline if self.has_timer => self.blink(OFFLINE_BLINK_MS),
            IndicatorState::Offline => self.steady(false),
            IndicatorState::Fault if self.has_timer => self.blink(FAULT_BLINK_MS),
            IndicatorState::Fault => self.steady(true),
        };
        self.shown = result.as_ref().ok().map(|()| state);
        result
    }
}

/// Whether `name` is among the triggers in a sysfs `trigger` file, which lists them
/// space-separated with the active one in brackets: `none [timer] heartbeat`.
fn trigger_listed(list: &str, name: &str) -> bool {
    list.split_whitespace()
        .map(|t| t.trim_start_matches('[').trim_end_matches(']'))
        .any(|t| t == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// A directory shaped like `/sys/class/leds/<name>`; `triggers` is the content of the
    /// `trigger` file, or `None` for a kernel without LED triggers. The timer's delay files
    /// exist up front, as they would once the kernel has activated the timer trigger.
    fn fake_led(triggers: Option<&str>, max_brightness: Option<&str>) -> TempDir {
        let dir = TempDir::new("led");
        fs::write(dir.path().join("brightness"), "0\n").unwrap();
        if let Some(max) = max_brightness {
            fs::write(dir.path().join("max_brightness"), max).unwrap();
        }
        if let Some(list) = triggers {
            fs::write(dir.path().join("trigger"), list).unwrap();
            if trigger_listed(list, "timer") {
                fs::write(dir.path().join("delay_on"), "500\n").unwrap();
                fs::write(dir.path().join("delay_off"), "500\n").unwrap();
            }
        }
        dir
    }

    fn read(dir: &TempDir, name: &str) -> String {
        fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    const TRIGGERS: &str = "[none] kbd-scrolllock timer heartbeat default-on\n";

    #[test]
    fn online_clears_the_trigger_and_lights_at_max_brightness() {
        let dir = fake_led(Some(TRIGGERS), Some("255\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Online).unwrap();
        assert_eq!(read(&dir, "trigger"), "none");
        assert_eq!(read(&dir, "brightness"), "255");
    }

    #[test]
    fn max_brightness_defaults_to_one_when_missing_or_nonsense() {
        for max in [None, Some("0\n"), Some("bright\n")] {
            let dir = fake_led(Some(TRIGGERS), max);
            let mut led = SysfsLed::open(dir.path()).unwrap();
            led.set(IndicatorState::Online).unwrap();
            assert_eq!(read(&dir, "brightness"), "1", "max_brightness {max:?}");
        }
    }

    #[test]
    fn offline_blinks_slowly_with_the_timer_trigger() {
        let dir = fake_led(Some(TRIGGERS), Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Offline).unwrap();
        assert_eq!(read(&dir, "trigger"), "timer");
        assert_eq!(read(&dir, "delay_on"), "1000");
        assert_eq!(read(&dir, "delay_off"), "1000");
    }

    #[test]
    fn fault_blinks_fast_with_the_timer_trigger() {
        let dir = fake_led(Some(TRIGGERS), Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Fault).unwrap();
        assert_eq!(read(&dir, "trigger"), "timer");
        assert_eq!(read(&dir, "delay_on"), "100");
        assert_eq!(read(&dir, "delay_off"), "100");
    }

    #[test]
    fn switching_between_blink_rates_keeps_the_timer_selected() {
        let dir = fake_led(Some(TRIGGERS), Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Offline).unwrap();
        // Stands in for the kernel: if the agent reselected `timer`, this marker would go.
        fs::write(dir.path().join("trigger"), "marker").unwrap();
        led.set(IndicatorState::Fault).unwrap();
        assert_eq!(read(&dir, "trigger"), "marker");
        assert_eq!(read(&dir, "delay_on"), "100");
    }

    #[test]
    fn without_a_timer_trigger_offline_is_dark_and_fault_is_lit() {
        let dir = fake_led(Some("[none] default-on\n"), Some("7\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Offline).unwrap();
        assert_eq!(read(&dir, "trigger"), "none");
        assert_eq!(read(&dir, "brightness"), "0");
        led.set(IndicatorState::Fault).unwrap();
        assert_eq!(read(&dir, "brightness"), "7");
        assert!(!dir.path().join("delay_on").exists());
    }

    #[test]
    fn a_kernel_without_led_triggers_still_gets_steady_light() {
        let dir = fake_led(None, Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Fault).unwrap();
        assert_eq!(read(&dir, "brightness"), "1");
        led.set(IndicatorState::Offline).unwrap();
        assert_eq!(read(&dir, "brightness"), "0");
        assert!(!dir.path().join("trigger").exists());
    }

    #[test]
    fn setting_the_same_state_again_writes_nothing() {
        let dir = fake_led(Some(TRIGGERS), Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        led.set(IndicatorState::Online).unwrap();
        fs::write(dir.path().join("brightness"), "untouched").unwrap();
        led.set(IndicatorState::Online).unwrap();
        assert_eq!(read(&dir, "brightness"), "untouched");
    }

    #[test]
    fn a_failed_write_is_reported_and_retried_on_the_next_set() {
        let dir = fake_led(Some(TRIGGERS), Some("1\n"));
        let mut led = SysfsLed::open(dir.path()).unwrap();
        fs::remove_file(dir.path().join("delay_on")).unwrap();
        let err = led.set(IndicatorState::Offline).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("delay_on"), "{err}");

        fs::write(dir.path().join("delay_on"), "500").unwrap();
        fs::write(dir.path().join("trigger"), "none").unwrap();
        led.set(IndicatorState::Offline).unwrap();
        assert_eq!(read(&dir, "trigger"), "timer");
        assert_eq!(read(&dir, "delay_on"), "1000");
    }

    #[test]
    fn opening_a_directory_that_is_not_an_led_fails_with_not_found() {
        let dir = TempDir::new("not-led");
        let err = SysfsLed::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("brightness"), "{err}");
    }

    #[test]
    fn the_active_trigger_in_brackets_counts_as_listed() {
        assert!(trigger_listed("none [timer] heartbeat", "timer"));
        assert!(trigger_listed("[none] timer", "timer"));
        assert!(!trigger_listed("none timer-ish heartbeat", "timer"));
    }
}

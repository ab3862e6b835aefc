//! Log rate limits, pure: a link that flaps or a store that keeps failing should leave a
//! few lines and a count in the journal, not one line per retry.

use std::time::{Duration, Instant};

/// At most `burst` lines per `window`; the rest are counted and the count is reported with
/// the next line that is let through.
#[derive(Debug, Clone)]
pub struct Throttle {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Throttle {
    /// `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one let through)` when a line may be logged
    /// at `now`; `None` when it should be dropped (or logged at a lower level).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now < start + self.window => {}
            _ => {
                self.window_start = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_let_through_then_lines_are_counted_until_the_window_ends() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(10));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(3)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), Some(0));
    }
}

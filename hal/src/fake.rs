//! In-memory stand-ins for the hardware traits, for the agent's tests. Each fake is `Clone`
//! and its clones share state, so a test keeps one clone to inspect while the code under test
//! owns the other (boxed as a trait object, moved into a task, ...). None of them ever fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Indicator, IndicatorState, LinkState, Watchdog};

/// An [`Indicator`] that records every state it was set to, in order.
#[derive(Debug, Clone, Default)]
pub struct FakeIndicator {
    history: Arc<Mutex<Vec<IndicatorState>>>,
}

impl FakeIndicator {
    /// A fake light that has never been set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every state passed to [`Indicator::set`], oldest first, repeats included.
    pub fn history(&self) -> Vec<IndicatorState> {
        self.lock().clone()
    }

    /// The state last set, if any.
    pub fn current(&self) -> Option<IndicatorState> {
        self.lock().last().copied()
    }

    // A test that panicked while holding the lock must not hide the history from the next
    // assertion; the Vec is always valid, so poisoning carries no information here.
    fn lock(&self) -> MutexGuard<'_, Vec<IndicatorState>> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Indicator for FakeIndicator {
    fn set(&mut self, state: IndicatorState) -> std::io::Result<()> {
        self.lock().push(state);
        Ok(())
    }
}

/// A [`Watchdog`] that counts kicks and remembers whether it was disarmed.
#[derive(Debug, Clone, Default)]
pub struct FakeWatchdog {
    kicks: Arc<AtomicU64>,
    disarmed: Arc<AtomicBool>,
}

impl FakeWatchdog {
    /// A fake watchdog with no kicks and not disarmed.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times [`Watchdog::kick`] was called.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::SeqCst)
    }

    /// Whether [`Watchdog::disarm`] was called.
    pub fn disarmed(&self) -> bool {
        self.disarmed.load(Ordering::SeqCst)
    }
}

impl Watchdog for FakeWatchdog {
    fn kick(&mut self) -> std::io::Result<()> {
        self.kicks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        self.disarmed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A [`LinkState`] the test flips with [`FakeLink::set_up`].
#[derive(Debug, Clone, Default)]
pub struct FakeLink {
    up: Arc<AtomicBool>,
}

impl FakeLink {
    /// A fake link that starts `up` or down.
    pub fn new(up: bool) -> Self {
        Self {
            up: Arc::new(AtomicBool::new(up)),
        }
    }

    /// Sets what [`LinkState::is_up`] reports from now on, for every clone.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

impl LinkState for FakeLink {
    fn is_up(&self) -> std::io::Result<bool> {
        Ok(self.up.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indicator_clones_share_one_history() {
        let seen = FakeIndicator::new();
        let mut driven: Box<dyn Indicator> = Box::new(seen.clone());
        assert_eq!(seen.current(), None);
        driven.set(IndicatorState::Offline).unwrap();
        driven.set(IndicatorState::Online).unwrap();
        driven.set(IndicatorState::Online).unwrap();
        assert_eq!(
            seen.history(),
            vec![
                IndicatorState::Offline,
                IndicatorState::Online,
                IndicatorState::Online
            ]
        );
        assert_eq!(seen.current(), Some(IndicatorState::Online));
    }

    #[test]
    fn watchdog_counts_kicks_and_remembers_disarm() {
        let seen = FakeWatchdog::new();
        let mut driven = seen.clone();
        driven.kick().unwrap();
        driven.kick().unwrap();
        assert_eq!(seen.kicks(), 2);
        assert!(!seen.disarmed());
        driven.disarm().unwrap();
        assert!(seen.disarmed());
    }

    #[test]
    fn link_reports_what_the_test_last_set() {
        let link = FakeLink::new(false);
        let driven = link.clone();
        assert!(!driven.is_up().unwrap());
        link.set_up(true);
        assert!(driven.is_up().unwrap());
    }
}

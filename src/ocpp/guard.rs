//! Handshake guessing limits and the `security.event` rate limit, pure (CONTRACT §6: the
//! limits lock the guessing sources, never a known charger that has not itself failed).
//!
//! A refused handshake (wrong or missing password, a refused certificate, a downgrade, an
//! unknown id) counts against its remote address and, when the path named one, against
//! that charger id. Once either has [`Guard::limit`] failures within [`WINDOW`], its
//! further handshakes are answered 429 before any argon2 run: a guesser gets at most that
//! many tries a minute per id whatever number of addresses it uses, and per address
//! whatever ids it tries. A charger whose password verified before is checked against the
//! server's cache first, so a guesser using its id does not lock it out (until the agent
//! restarts and the cache is empty: documented in docs/ocpp.md).
//!
//! The events are limited per remote address: [`EVENTS_PER_SOURCE`] a minute go upstream;
//! the rest are counted and the count rides on the next one let through, so a scanner
//! cannot flood the outbox and is never silent either.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The failure window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// `security.event`s per remote address per [`WINDOW`].
pub const EVENTS_PER_SOURCE: u32 = 5;
/// Sources (ids or addresses) remembered at once; past it, new ones share one bucket, so
/// a scan over many addresses is limited together instead of growing the map.
const MAX_SOURCES: usize = 4096;

/// Who a failure or an event is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Id(String),
    Addr(IpAddr),
    Overflow,
}

#[derive(Debug, Default)]
struct Events {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// The failure and event counts of one server.
#[derive(Debug)]
pub struct Guard {
    limit: usize,
    failures: HashMap<Source, VecDeque<Instant>>,
    events: HashMap<Source, Events>,
}

impl Guard {
    /// `limit` failed handshakes per id and per address per [`WINDOW`].
    pub fn new(limit: u32) -> Self {
        Self {
            limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
            failures: HashMap::new(),
            events: HashMap::new(),
        }
    }

    /// The failures allowed per id and per address per window.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// `s` itself when it is already counted or there is room for it; else the shared
    /// overflow bucket.
    fn key<V>(map: &HashMap<Source, V>, s: Source) -> Source {
        if map.contains_key(&s) || map.len() < MAX_SOURCES {
            s
        } else {
            Source::Overflow
        }
    }

    fn expire(&mut self, now: Instant) {
        self.failures.retain(|_, f| {
            while f
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
            {
                f.pop_front();
            }
            !f.is_empty()
        });
    }

    fn count(&self, s: &Source) -> usize {
        self.failures.get(s).map_or(0, VecDeque::len)
    }

    /// Whether a handshake from `addr` for `cp_id` may be checked at `now`; `false`:
    /// answer 429 without checking anything.
    pub fn admits(&mut self, cp_id: Option<&str>, addr: IpAddr, now: Instant) -> bool {
        self.expire(now);
        let over = |n: usize| n >= self.limit;
        let addr_key = Self::key(&self.failures, Source::Addr(addr));
        if over(self.count(&addr_key)) {
            return false;
        }
        match cp_id {
            Some(id) => !over(self.count(&Source::Id(id.to_string()))),
            None => true,
        }
    }

    /// A refused handshake from `addr` (for `cp_id` when the path named a listed one).
    pub fn failed(&mut self, cp_id: Option<&str>, addr: IpAddr, now: Instant) {
        let mut push = |s: Source| {
            let k = Self::key(&self.failures, s);
            self.failures.entry(k).or_default().push_back(now);
        };
        push(Source::Addr(addr));
        if let Some(id) = cp_id {
            push(Source::Id(id.to_string()));
        }
    }

    /// Whether a `security.event` about `addr` goes upstream at `now`: `Some(n)` with the
    /// number suppressed since the last one that went, `None` to count it only.
    pub fn report(&mut self, addr: IpAddr, now: Instant) -> Option<u64> {
        if self.events.len() >= MAX_SOURCES {
            self.events.retain(|_, e| {
                e.window_start
                    .is_some_and(|t| now.saturating_duration_since(t) < WINDOW)
                    || e.suppressed > 0
            });
        }
        let k = Self::key(&self.events, Source::Addr(addr));
        let e = self.events.entry(k).or_default();
        match e.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {}
            _ => {
                e.window_start = Some(now);
                e.used = 0;
            }
        }
        if e.used < EVENTS_PER_SOURCE {
            e.used += 1;
            Some(std::mem::take(&mut e.suppressed))
        } else {
            e.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, last))
    }

    #[test]
    fn an_address_that_keeps_failing_is_refused_until_the_window_passes() {
        let t0 = Instant::now();
        let mut g = Guard::new(3);
        for i in 0..3 {
            assert!(g.admits(Some("CP1"), ip(9), t0), "try {i}");
            g.failed(Some("CP1"), ip(9), t0);
        }
        assert!(!g.admits(Some("CP1"), ip(9), t0));
        assert!(
            !g.admits(Some("CP2"), ip(9), t0),
            "the address is locked, whatever id"
        );
        assert!(g.admits(Some("CP1"), ip(9), t0 + WINDOW));
    }

    #[test]
    fn many_addresses_guessing_one_id_are_limited_together() {
        let t0 = Instant::now();
        let mut g = Guard::new(3);
        for a in 0..3 {
            assert!(g.admits(Some("CP1"), ip(a), t0));
            g.failed(Some("CP1"), ip(a), t0);
        }
        assert!(
            !g.admits(Some("CP1"), ip(200), t0),
            "the id is locked, from anywhere"
        );
        assert!(g.admits(Some("CP2"), ip(200), t0), "another charger is not");
    }

    #[test]
    fn a_charger_that_has_not_failed_is_never_locked_by_another_address() {
        let t0 = Instant::now();
        let mut g = Guard::new(3);
        for _ in 0..10 {
            g.failed(Some("CP9"), ip(66), t0);
        }
        assert!(g.admits(Some("CP1"), ip(20), t0));
        assert!(g.admits(None, ip(20), t0));
    }

    #[test]
    fn a_flood_of_addresses_shares_one_bucket_instead_of_growing_the_map() {
        let t0 = Instant::now();
        let mut g = Guard::new(2);
        for n in 0..(MAX_SOURCES as u32 + 10) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            g.failed(None, a, t0);
        }
        assert!(g.failures.len() <= MAX_SOURCES + 1);
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(172, 16, 0, 1));
        assert!(
            !g.admits(None, fresh, t0),
            "new addresses fall in the full overflow bucket"
        );
    }

    #[test]
    fn events_per_address_are_limited_and_the_rest_counted_into_the_next() {
        let t0 = Instant::now();
        let mut g = Guard::new(3);
        for _ in 0..EVENTS_PER_SOURCE {
            assert_eq!(g.report(ip(5), t0), Some(0));
        }
        assert_eq!(g.report(ip(5), t0), None);
        assert_eq!(g.report(ip(5), t0), None);
        assert_eq!(
            g.report(ip(6), t0),
            Some(0),
            "another address has its own budget"
        );
        assert_eq!(
            g.report(ip(5), t0 + WINDOW),
            Some(2),
            "never silent: the count comes along"
        );
    }
}

//! HTTP Basic auth for the status server on a non-loopback address (CONTRACT §5, §6), as a
//! pure decision: the header and `now` in; allowed, verify this password, refused or
//! throttled out. The driver runs the argon2 verification it asks for (off the async
//! workers) and reports the outcome back.
//!
//! As in the OCPP handshake, a password that verified once is remembered (as its SHA-256,
//! compared in constant time), so a page that refreshes every few seconds costs one argon2
//! run, not one per request. Wrong passwords are rate-limited per guessing source (CONTRACT
//! §6: the limits lock the sources, never the engineer who has not failed): after
//! [`MAX_FAILURES`] within [`WINDOW`] from one remote address, its requests that are not
//! already verified are answered 429 until the window has passed; and site-wide, after
//! [`MAX_FAILURES_SITE`] from all addresses together, so that many addresses cannot
//! brute-force the hash at argon2's pace either, nor spend the gateway's CPU on it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Wrong passwords from one address within [`WINDOW`] after which its unverified requests
/// are throttled.
pub const MAX_FAILURES: usize = 5;
/// Wrong passwords from all addresses within [`WINDOW`] after which every unverified
/// request is throttled.
pub const MAX_FAILURES_SITE: usize = 30;
/// Addresses whose failures are remembered at once; past it, the site-wide limit alone.
const MAX_SOURCES: usize = 256;
/// The failure window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Serve it: the password is the one that verified before.
    Allowed,
    /// Run argon2 on this password, then call [`Gate::verified`].
    Verify(String),
    /// 401: no or malformed credentials.
    Missing,
    /// 429: too many wrong passwords lately.
    Throttled,
}

/// The auth state of one status server.
#[derive(Debug, Default)]
pub struct Gate {
    /// SHA-256 of the password that verified last.
    verified: Option<[u8; 32]>,
    /// When recent wrong passwords came, from anywhere.
    failures: VecDeque<Instant>,
    /// The same, per remote address (`None`: the local socket).
    by_source: HashMap<Option<IpAddr>, VecDeque<Instant>>,
}

/// The password of an `Authorization: Basic …` header (any user name); `None` when it is
/// absent or not Basic.
pub fn basic_password(header: Option<&str>) -> Option<String> {
    let h = header?.trim();
    let (scheme, b64) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Gate {
    /// The decision on a request from `source` with this `Authorization` header at `now`.
    pub fn check(&mut self, header: Option<&str>, source: Option<IpAddr>, now: Instant) -> Check {
        let recent = |t: &Instant| now.saturating_duration_since(*t) < WINDOW;
        while self.failures.front().is_some_and(|t| !recent(t)) {
            self.failures.pop_front();
        }
        self.by_source.retain(|_, f| {
            while f.front().is_some_and(|t| !recent(t)) {
                f.pop_front();
            }
            !f.is_empty()
        });
        let Some(password) = basic_password(header) else {
            return Check::Missing;
        };
        if let Some(v) = &self.verified {
            if constant_time_eq(v, &digest(&password)) {
                return Check::Allowed;
            }
        }
        let from_source = self.by_source.get(&source).map_or(0, VecDeque::len);
        if from_source >= MAX_FAILURES || self.failures.len() >= MAX_FAILURES_SITE {
            return Check::Throttled;
        }
        Check::Verify(password)
    }

    /// The outcome of the argon2 run [`Check::Verify`] asked for.
    pub fn verified(&mut self, password: &str, ok: bool, source: Option<IpAddr>, now: Instant) {
        if ok {
            self.verified = Some(digest(password));
            return;
        }
        self.failures.push_back(now);
        if self.by_source.len() < MAX_SOURCES || self.by_source.contains_key(&source) {
            self.by_source.entry(source).or_default().push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 20)));

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn a_password_is_verified_once_then_allowed_from_the_cache() {
        let mut g = Gate::default();
        let t = Instant::now();
        let h = basic("engineer:s3cret");
        assert_eq!(g.check(Some(&h), A, t), Check::Verify("s3cret".into()));
        g.verified("s3cret", true, A, t);
        assert_eq!(g.check(Some(&h), A, t), Check::Allowed);
        assert_eq!(
            g.check(Some(&basic("other-user:s3cret")), A, t),
            Check::Allowed,
            "any user name"
        );
        assert_eq!(
            g.check(Some(&basic("engineer:wrong")), A, t),
            Check::Verify("wrong".into())
        );
    }

    #[test]
    fn no_or_malformed_credentials_are_missing() {
        let mut g = Gate::default();
        let t = Instant::now();
        assert_eq!(g.check(None, A, t), Check::Missing);
        assert_eq!(g.check(Some("Bearer abc"), A, t), Check::Missing);
        assert_eq!(g.check(Some("Basic !!!"), A, t), Check::Missing);
        assert_eq!(g.check(Some(&basic("no-colon")), A, t), Check::Missing);
    }

    #[test]
    fn wrong_passwords_throttle_unverified_requests_until_the_window_passes() {
        let mut g = Gate::default();
        let t = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                g.check(Some(&basic("u:bad")), A, t),
                Check::Verify(_)
            ));
            g.verified("bad", false, A, t);
        }
        assert_eq!(g.check(Some(&basic("u:good")), A, t), Check::Throttled);
        assert_eq!(
            g.check(Some(&basic("u:good")), A, t + WINDOW),
            Check::Verify("good".into())
        );
    }

    #[test]
    fn a_verified_password_is_served_even_while_others_are_throttled() {
        let mut g = Gate::default();
        let t = Instant::now();
        g.verified("good", true, A, t);
        for _ in 0..MAX_FAILURES {
            g.verified("bad", false, A, t);
        }
        assert_eq!(g.check(Some(&basic("u:good")), A, t), Check::Allowed);
        assert_eq!(g.check(Some(&basic("u:bad")), A, t), Check::Throttled);
    }

    #[test]
    fn a_guesser_locks_out_only_its_own_address_until_the_site_wide_limit() {
        let mut g = Gate::default();
        let t = Instant::now();
        let guesser = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 66)));
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                g.check(Some(&basic("u:bad")), guesser, t),
                Check::Verify(_)
            ));
            g.verified("bad", false, guesser, t);
        }
        assert_eq!(g.check(Some(&basic("u:bad")), guesser, t), Check::Throttled);
        // the engineer's laptop, which has not failed, may still try its password
        assert_eq!(
            g.check(Some(&basic("u:good")), A, t),
            Check::Verify("good".into())
        );
        // many addresses together reach the site-wide limit
        for i in 0..MAX_FAILURES_SITE {
            let src = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i as u8)));
            g.verified("bad", false, src, t);
        }
        assert_eq!(g.check(Some(&basic("u:good")), A, t), Check::Throttled);
        assert!(matches!(
            g.check(Some(&basic("u:good")), A, t + WINDOW),
            Check::Verify(_)
        ));
    }
}

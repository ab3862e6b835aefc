//! HTTP Basic auth for the status server on a non-loopback address (CONTRACT §5, §6), as a
//! pure decision: the header and `now` in; allowed, verify this password, refused or
//! throttled out. The driver runs the argon2 verification it asks for (off the async
//! workers) and reports the outcome back.
//!
//! As in the OCPP handshake, a password that verified once is remembered (as its SHA-256,
//! compared in constant time), so a page that refreshes every few seconds costs one argon2
//! run, not one per request. Wrong passwords are rate-limited: after
//! [`MAX_FAILURES`] within [`WINDOW`], every request that is not already verified is
//! answered 429 until the window has passed, so the hash cannot be brute-forced at
//! argon2's pace, nor the gateway's CPU spent on it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Wrong passwords within [`WINDOW`] after which unverified requests are throttled.
pub const MAX_FAILURES: usize = 5;
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
    /// When recent wrong passwords came.
    failures: VecDeque<Instant>,
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
    /// The decision on a request with this `Authorization` header at `now`.
    pub fn check(&mut self, header: Option<&str>, now: Instant) -> Check {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.failures.pop_front();
        }
        let Some(password) = basic_password(header) else {
            return Check::Missing;
        };
        if let Some(v) = &self.verified {
            if constant_time_eq(v, &digest(&password)) {
                return Check::Allowed;
            }
        }
        if self.failures.len() >= MAX_FAILURES {
            return Check::Throttled;
        }
        Check::Verify(password)
    }

    /// The outcome of the argon2 run [`Check::Verify`] asked for.
    pub fn verified(&mut self, password: &str, ok: bool, now: Instant) {
        if ok {
            self.verified = Some(digest(password));
        } else {
            self.failures.push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(g.check(Some(&h), t), Check::Verify("s3cret".into()));
        g.verified("s3cret", true, t);
        assert_eq!(g.check(Some(&h), t), Check::Allowed);
        assert_eq!(
            g.check(Some(&basic("other-user:s3cret")), t),
            Check::Allowed,
            "any user name"
        );
        assert_eq!(
            g.check(Some(&basic("engineer:wrong")), t),
            Check::Verify("wrong".into())
        );
    }

    #[test]
    fn no_or_malformed_credentials_are_missing() {
        let mut g = Gate::default();
        let t = Instant::now();
        assert_eq!(g.check(None, t), Check::Missing);
        assert_eq!(g.check(Some("Bearer abc"), t), Check::Missing);
        assert_eq!(g.check(Some("Basic !!!"), t), Check::Missing);
        assert_eq!(g.check(Some(&basic("no-colon")), t), Check::Missing);
    }

    #[test]
    fn wrong_passwords_throttle_unverified_requests_until_the_window_passes() {
        let mut g = Gate::default();
        let t = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                g.check(Some(&basic("u:bad")), t),
                Check::Verify(_)
            ));
            g.verified("bad", false, t);
        }
        assert_eq!(g.check(Some(&basic("u:good")), t), Check::Throttled);
        assert_eq!(
            g.check(Some(&basic("u:good")), t + WINDOW),
            Check::Verify("good".into())
        );
    }

    #[test]
    fn a_verified_password_is_served_even_while_others_are_throttled() {
        let mut g = Gate::default();
        let t = Instant::now();
        g.verified("good", true, t);
        for _ in 0..MAX_FAILURES {
            g.verified("bad", false, t);
        }
        assert_eq!(g.check(Some(&basic("u:good")), t), Check::Allowed);
        assert_eq!(g.check(Some(&basic("u:bad")), t), Check::Throttled);
    }
}

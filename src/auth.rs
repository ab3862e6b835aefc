//! OTP and id-tag decisions, pure: given the stored records, the presented tag's keyed hash
//! and `now`, accept or refuse (CONTRACT §4, OTP rules).
//!
//! An OTP is never stored or compared in clear: the agent keeps only
//! HMAC-SHA256(site secret, digits), where the secret is generated on first start in the
//! state directory (mode 0600) and never enters the database; presented codes are hashed
//! the same way and compared against every candidate in constant time.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A keyed hash of an OTP.
pub type OtpHash = [u8; 32];

/// The per-site key for OTP hashes.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from raw bytes (tests).
    pub fn from_bytes(b: [u8; 32]) -> Secret {
        Secret(b)
    }

    /// HMAC-SHA256 of the digits.
    pub fn hash(&self, otp: &str) -> OtpHash {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes a key of any length")
        };
        mac.update(otp.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Loads `<dir>/otp-secret`, creating it (32 random bytes, mode 0600) on first start.
    ///
    /// # Errors
    /// The I/O error, or a malformed file.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Secret> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("otp-secret");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex_decode(text.trim())
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{} is not 64 hex characters", path.display()),
                        )
                    })?;
                let mut out = [0u8; 32];
                out.copy_from_slice(&bytes);
                Ok(Secret(out))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let mut out = [0u8; 32];
                getrandom::fill(&mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(hex(&out).as_bytes())?;
                f.sync_all()?;
                Ok(Secret(out))
            }
            Err(e) => Err(e),
        }
    }
}

impl Secret {
    /// The key that seals what the agent must keep but never in clear, derived from the
    /// site secret (so it too never enters the database).
    pub fn sealer(&self) -> Sealer {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes a key of any length")
        };
        // Not valid UTF-8, so no string anything hashes with `Secret::hash` (a command's
        // `otp` field, a tag) can ever give this key.
        mac.update(b"\xffchargesite seal v1");
        Sealer(mac.finalize().into_bytes().into())
    }
}

/// ChaCha20-Poly1305 (ring) under a key derived from the site secret. A sealed value is
/// `nonce (12 random bytes) || ciphertext || tag`; `purpose` is bound as associated data,
/// so a value sealed for one use cannot be opened as another.
#[derive(Clone)]
pub struct Sealer([u8; 32]);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    fn key(&self) -> ring::aead::LessSafeKey {
        let Ok(k) = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.0) else {
            unreachable!("a 32-byte ChaCha20-Poly1305 key")
        };
        ring::aead::LessSafeKey::new(k)
    }

    /// Seals `plain` for `purpose`.
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Result<Vec<u8>, getrandom::Error> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce)?;
        let mut out = Vec::with_capacity(12 + plain.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key()
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(purpose.as_bytes()),
                &mut body,
            )
            .map_err(|_| getrandom::Error::UNSUPPORTED)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value sealed for `purpose`; `None` when it was not (another key, another
    /// purpose, or altered).
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_at_checked(12)?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, ring::aead::Aad::from(purpose.as_bytes()), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// RFC 4226 HOTP: HMAC-SHA1 of the 8-byte big-endian `counter`, dynamically truncated to
/// `digits` decimal digits (6 to 8 here).
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = ring::hmac::sign(&k, &counter.to_be_bytes());
    let h = tag.as_ref();
    let offset = usize::from(h[19] & 0x0f);
    let code = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    let modulus = 10u32.pow(digits.clamp(6, 9));
    format!(
        "{:0width$}",
        code % modulus,
        width = digits.clamp(6, 9) as usize
    )
}

/// How the site accepts codes of orders the BPP confirmed while it was offline
/// (`offline_orders.configure`), with the counters used so far.
#[derive(Clone, PartialEq)]
pub struct OfflineWindow {
    /// The shared key.
    pub key: Vec<u8>,
    /// Code length, 6 to 8.
    pub digits: u32,
    /// How far past the highest used counter a code may be.
    pub lookahead: u64,
    /// The highest counter used, if any.
    pub highest: Option<u64>,
    /// Counters below the highest that were skipped and not used since, with when they
    /// were skipped: each stays usable for `valid` after that.
    pub skipped: Vec<(u64, DateTime<Utc>)>,
    /// Used counters near the highest (a code presented again is `used`, not a guess).
    pub used: Vec<u64>,
    /// How long a skipped counter stays usable.
    pub valid: Duration,
}

impl std::fmt::Debug for OfflineWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineWindow")
            .field("key", &"(hidden)")
            .field("digits", &self.digits)
            .field("lookahead", &self.lookahead)
            .field("highest", &self.highest)
            .field("skipped", &self.skipped.len())
            .field("used", &self.used.len())
            .finish()
    }
}

/// What a presented code is to the offline-order window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineMatch {
    /// An unused counter in the window: the code is good.
    Accepted(u64),
    /// A counter already used.
    Used(u64),
    /// A skipped counter whose time ran out.
    Expired(u64),
    /// No counter's code.
    None,
}

impl OfflineWindow {
    /// The unused counters a code may match now: every counter up to `lookahead` past
    /// the highest used one, and the skipped ones still valid. A guess succeeds with
    /// probability (number of candidates) / 10^digits.
    pub fn candidates(&self, now: DateTime<Utc>) -> Vec<u64> {
        let first = self.highest.map_or(0, |h| h.saturating_add(1));
        let mut out: Vec<u64> = (0..self.lookahead)
            .filter_map(|i| first.checked_add(i))
            .collect();
        out.extend(
            self.skipped
                .iter()
                .filter(|(_, at)| now - *at <= self.valid)
                .map(|(c, _)| *c),
        );
        out
    }

    /// Matches a presented code, given as its keyed hash (the digits never reach the
    /// store): every counter's code is hashed with the same `secret` and compared in
    /// constant time.
    pub fn check(&self, presented: &OtpHash, secret: &Secret, now: DateTime<Utc>) -> OfflineMatch {
        let hit = |c: u64| ct_eq(&secret.hash(&hotp(&self.key, c, self.digits)), presented);
        let mut found = OfflineMatch::None;
        for c in self.candidates(now) {
            if hit(c) && found == OfflineMatch::None {
                found = OfflineMatch::Accepted(c);
            }
        }
        for &c in &self.used {
            if hit(c) && found == OfflineMatch::None {
                found = OfflineMatch::Used(c);
            }
        }
        for &(c, at) in &self.skipped {
            if now - at > self.valid && hit(c) && found == OfflineMatch::None {
                found = OfflineMatch::Expired(c);
            }
        }
        found
    }
}

/// An id tag the agent controls (a remote start's, a test session's): `prefix` and 16
/// random hex digits, within 1.6's CiString20.
///
/// # Errors
/// The system's random source failed.
pub fn agent_tag(prefix: &str) -> Result<String, getrandom::Error> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)?;
    Ok(format!("{prefix}{}", hex(&b).to_uppercase()))
}

/// The tokens a reservation is held under at its charger: its own (`RV…`, what a
/// `session.start` on it presents) and its group's (`RG…`, what the agent answers the
/// order's OTP with, so that the charger lets that driver in). Derived from the site
/// secret and the reservation id, so neither is stored; 18 characters, within 1.6's 20.
pub fn reservation_tokens(secret: &Secret, reservation_id: i64) -> (String, String) {
    let derive = |prefix: &str, purpose: &str| {
        let h = secret.hash(&format!("reservation {purpose} {reservation_id}"));
        format!("{prefix}{}", hex(&h[..8]).to_uppercase())
    };
    (derive("RV", "tag"), derive("RG", "group"))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a presented id tag has the shape of an OTP (4 to 8 digits).
pub fn looks_like_otp(tag: &str) -> bool {
    (4..=8).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_digit())
}

/// Constant-time equality of two byte strings of the same length (false otherwise).
pub fn ct_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Constant-time equality of two hashes.
pub fn ct_eq(a: &OtpHash, b: &OtpHash) -> bool {
    ct_eq_bytes(a, b)
}

/// A stored OTP authorization.
#[derive(Debug, Clone, PartialEq)]
pub struct OtpRecord {
    /// The Beckn order.
    pub order_id: String,
    /// Keyed hash of the digits.
    pub otp_hash: OtpHash,
    /// Not valid before.
    pub valid_from: Option<DateTime<Utc>>,
    /// Not valid after.
    pub valid_until: DateTime<Utc>,
    /// Only at this charger, if set.
    pub cp_id: Option<String>,
    /// Only at this connector, if set.
    pub connector_id: Option<u32>,
    /// How many sessions it may start.
    pub max_uses: u32,
    /// How many it has started.
    pub uses: u32,
    /// Revoked by the BPP.
    pub revoked: bool,
}

impl OtpRecord {
    fn in_scope(&self, cp_id: &str, connector_id: Option<u32>) -> bool {
        self.cp_id.as_deref().is_none_or(|c| c == cp_id)
            && match (self.connector_id, connector_id) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }

    fn window_overlaps(&self, other: &OtpRecord) -> bool {
        let start = |r: &OtpRecord| r.valid_from.unwrap_or(DateTime::<Utc>::MIN_UTC);
        start(self) <= other.valid_until && start(other) <= self.valid_until
    }

    fn scope_overlaps(&self, other: &OtpRecord) -> bool {
        let cp = match (&self.cp_id, &other.cp_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let conn = match (self.connector_id, other.connector_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        cp && conn
    }

    fn live(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.uses < self.max_uses && self.valid_until >= now
    }
}

/// Brute-force protection (CONTRACT §4 OTP rules and §6 OTP guessing): failures on one
/// charger within a window lock OTP entry there; on top of that, budgets for wrong codes
/// at the whole site and from one remote address, so that rotating charger ids or opening
/// more sockets buys no more guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Wrong codes that trigger the lock.
    pub max_failures: usize,
    /// Within this window.
    pub window: Duration,
    /// For this long.
    pub duration: Duration,
    /// Wrong codes at the whole site within `budget_window` after which every guessing
    /// source is locked (see [`Lockout::lock`]).
    pub site_max_failures: usize,
    /// Wrong codes from one remote address within `budget_window` after which that
    /// address's guessing sources are locked.
    pub address_max_failures: usize,
    /// The sliding window of both budgets.
    pub budget_window: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::minutes(5),
            duration: Duration::minutes(5),
            site_max_failures: 30,
            address_max_failures: 10,
            budget_window: Duration::hours(1),
        }
    }
}

/// Where a charger's connection comes from, kept with it for the guessing limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The remote IP address.
    pub remote: Option<String>,
    /// The id is configured in `[[ocpp.chargers]]`.
    pub known: bool,
}

impl Origin {
    /// The source of an attempt on `cp_id` from this origin.
    pub fn source<'a>(&'a self, cp_id: &'a str) -> Source<'a> {
        Source {
            cp_id,
            remote: self.remote.as_deref(),
            known: self.known,
        }
    }
}

/// Who presents a code, as the guessing limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    /// The charger id the code came in on.
    pub cp_id: &'a str,
    /// The charger's remote address, when it came over a socket.
    pub remote: Option<&'a str>,
    /// The id is configured in `[[ocpp.chargers]]` (not an id that an
    /// `allow_unknown_chargers` site let in).
    pub known: bool,
}

/// The wrong codes the store counted for one attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    /// This charger's wrong codes since `now − max(window + duration, budget_window)`.
    pub charger: Vec<DateTime<Utc>>,
    /// Wrong codes from the source's address within the budget window.
    pub address: usize,
    /// Wrong codes at the whole site within the budget window.
    pub site: usize,
}

/// Which limit locked OTP entry for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Too many wrong codes on this charger.
    Charger,
    /// Too many from this remote address, and this source is a suspect.
    Address,
    /// Too many at the whole site, and this source is a suspect.
    Site,
}

impl Lockout {
    /// Whether an attempt from `source` is locked. The per-charger lockout locks its
    /// charger. The address and site budgets lock only suspects: an id that is not
    /// configured, or a charger that itself gave a wrong code within the budget window;
    /// a configured charger that has not failed keeps working, so an attacker cannot lock
    /// drivers out of the site (CONTRACT §6).
    pub fn lock(&self, source: &Source<'_>, recent: &Recent, now: DateTime<Utc>) -> Option<Lock> {
        if self.locked_until(&recent.charger, now).is_some() {
            return Some(Lock::Charger);
        }
        let since = now - self.budget_window;
        let failed_here = recent.charger.iter().any(|t| *t > since && *t <= now);
        let suspect = !source.known || failed_here;
        if !suspect {
            return None;
        }
        if source.remote.is_some() && recent.address >= self.address_max_failures {
            return Some(Lock::Address);
        }
        (recent.site >= self.site_max_failures).then_some(Lock::Site)
    }

    /// How far back the store must count for [`Lockout::lock`].
    pub fn horizon(&self) -> Duration {
        (self.window + self.duration).max(self.budget_window)
    }

    /// Until when OTP entry is locked, given the charger's recent failures (any order).
    pub fn locked_until(
        &self,
        failures: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut f: Vec<_> = failures.iter().copied().filter(|t| *t <= now).collect();
        f.sort();
        // the latest run of max_failures within the window locks from its last failure
        f.windows(self.max_failures.max(1))
            .filter(|w| w[w.len() - 1] - w[0] <= self.window)
            .map(|w| w[w.len() - 1] + self.duration)
            .filter(|until| *until > now)
            .max()
    }
}

/// How often refused attempts at one key are reported while OTP entry stays locked.
pub const BLOCKED_REPORT_INTERVAL: Duration = Duration::minutes(1);

/// Attempts refused while locked, reported in aggregate (one `auth.checked` with a
/// `count` per charger per interval, never one event each): the first at a key is
/// reported at once; later ones within [`BLOCKED_REPORT_INTERVAL`] are counted, and
/// reported by the next attempt after it or by [`BlockedTally::flush`]. A configured
/// charger is its own key; every unknown id shares one, so rotating ids does not multiply
/// the events (nor this map).
#[derive(Debug, Default)]
pub struct BlockedTally {
    buckets: std::collections::HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    reported: DateTime<Utc>,
    pending: u64,
    cp_id: String,
    connector_id: Option<u32>,
    method: AuthMethod,
}

/// One aggregated report of blocked attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedReport {
    /// The charger (for the unknown-id key: the latest id).
    pub cp_id: String,
    /// The latest attempt's connector, when known.
    pub connector_id: Option<u32>,
    /// How the latest attempt presented itself (a code, a card).
    pub method: AuthMethod,
    /// Attempts since the previous report, this one included.
    pub count: u64,
}

impl BlockedTally {
    /// Counts a blocked attempt; the report to emit now, if one is due.
    pub fn note(
        &mut self,
        source: &Source<'_>,
        connector_id: Option<u32>,
        method: AuthMethod,
        now: DateTime<Utc>,
    ) -> Option<BlockedReport> {
        let key = if source.known { source.cp_id } else { "" };
        match self.buckets.get_mut(key) {
            Some(b) if now - b.reported < BLOCKED_REPORT_INTERVAL => {
                b.pending += 1;
                b.cp_id.clear();
                b.cp_id.push_str(source.cp_id);
                b.connector_id = connector_id;
                b.method = method;
                None
            }
            Some(b) => {
                let count = b.pending + 1;
                b.pending = 0;
                b.reported = now;
                Some(BlockedReport {
                    cp_id: source.cp_id.to_string(),
                    connector_id,
                    method,
                    count,
                })
            }
            None => {
                self.buckets.insert(
                    key.to_string(),
                    Bucket {
                        reported: now,
                        pending: 0,
                        cp_id: source.cp_id.to_string(),
                        connector_id,
                        method,
                    },
                );
                Some(BlockedReport {
                    cp_id: source.cp_id.to_string(),
                    connector_id,
                    method,
                    count: 1,
                })
            }
        }
    }

    /// The counts whose interval has passed; keys quiet for a whole interval are forgotten.
    pub fn flush(&mut self, now: DateTime<Utc>) -> Vec<BlockedReport> {
        let mut out = Vec::new();
        self.buckets.retain(|_, b| {
            if now - b.reported < BLOCKED_REPORT_INTERVAL {
                return true;
            }
            if b.pending == 0 {
                return false;
            }
            out.push(BlockedReport {
                cp_id: b.cp_id.clone(),
                connector_id: b.connector_id,
                method: b.method,
                count: b.pending,
            });
            b.pending = 0;
            b.reported = now;
            true
        });
        out
    }
}

/// How a driver was identified (`auth.checked.method`, `session.started.auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A Beckn OTP typed at the charger.
    Otp,
    /// An RFID tag (or any tag that is not an OTP).
    Rfid,
    /// The agent's own tag for a `session.start`.
    Remote,
}

impl AuthMethod {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Otp => "otp",
            AuthMethod::Rfid => "rfid",
            AuthMethod::Remote => "remote",
        }
    }

    /// Reads a stored spelling back.
    pub fn parse(s: &str) -> Option<AuthMethod> {
        [AuthMethod::Otp, AuthMethod::Rfid, AuthMethod::Remote]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// What was decided about a presented tag (`auth.checked.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// It may start (or authorize) a session.
    Accepted,
    /// Unknown, revoked, out of scope, not yet valid.
    Invalid,
    /// Its validity window has passed.
    Expired,
    /// It has no uses left.
    Used,
    /// OTP entry on this charger is locked.
    Blocked,
}

impl AuthResult {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Accepted => "accepted",
            AuthResult::Invalid => "invalid",
            AuthResult::Expired => "expired",
            AuthResult::Used => "used",
            AuthResult::Blocked => "blocked",
        }
    }

    /// Reads a stored spelling back.
    pub fn parse(s: &str) -> Option<AuthResult> {
        [
            AuthResult::Accepted,
            AuthResult::Invalid,
            AuthResult::Expired,
            AuthResult::Used,
            AuthResult::Blocked,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// The OCPP 1.6 `AuthorizationStatus`.
    pub fn ocpp_status(self) -> &'static str {
        match self {
            AuthResult::Accepted => "Accepted",
            AuthResult::Expired => "Expired",
            AuthResult::Blocked => "Blocked",
            AuthResult::Invalid | AuthResult::Used => "Invalid",
        }
    }
}

/// How an id tag was judged, for `auth.checked` and the session record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthDecision {
    /// How the driver was identified.
    pub method: AuthMethod,
    /// What was decided.
    pub result: AuthResult,
    /// The order it belongs to, when known.
    pub order_id: Option<String>,
    /// What may be stored for the tag (an OTP is never stored in clear).
    pub tag_key: String,
    /// An order confirmed while the site was offline: its HOTP counter.
    pub offline_counter: Option<u64>,
    /// An unknown tag accepted only because the uplink was down
    /// ([`UnknownTags::AcceptOffline`]): the session is flagged for later settlement.
    pub unverified: bool,
}

/// The outcome of an OTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtpOutcome {
    /// Valid: it may start (or authorize) a session.
    Accepted {
        /// Its order.
        order_id: String,
    },
    /// Known, but its validity window has passed.
    Expired {
        /// Its order.
        order_id: String,
    },
    /// Known, but it has no uses left.
    Used {
        /// Its order.
        order_id: String,
    },
    /// Unknown, revoked, out of scope, or not yet valid.
    Invalid,
    /// OTP entry on this charger is locked after repeated wrong codes.
    Blocked,
}

impl OtpOutcome {
    /// The contract's `result`.
    pub fn result(&self) -> AuthResult {
        match self {
            OtpOutcome::Accepted { .. } => AuthResult::Accepted,
            OtpOutcome::Expired { .. } => AuthResult::Expired,
            OtpOutcome::Used { .. } => AuthResult::Used,
            OtpOutcome::Invalid => AuthResult::Invalid,
            OtpOutcome::Blocked => AuthResult::Blocked,
        }
    }

    /// The order, when the code matched one.
    pub fn order_id(&self) -> Option<&str> {
        match self {
            OtpOutcome::Accepted { order_id }
            | OtpOutcome::Expired { order_id }
            | OtpOutcome::Used { order_id } => Some(order_id),
            _ => None,
        }
    }

    /// A wrong code, counted toward the lockout (a real but stale code is not a guess).
    pub fn is_failure(&self) -> bool {
        matches!(self, OtpOutcome::Invalid)
    }
}

/// Checks a presented OTP at `cp_id` (and `connector_id` when known) against every
/// record, comparing hashes in constant time. `locked` is the charger's lockout state.
pub fn check_otp(
    presented: &OtpHash,
    records: &[OtpRecord],
    cp_id: &str,
    connector_id: Option<u32>,
    now: DateTime<Utc>,
    locked: bool,
) -> OtpOutcome {
    if locked {
        return OtpOutcome::Blocked;
    }
    // compare against all of them, whatever matches first
    let matching: Vec<&OtpRecord> = records
        .iter()
        .filter(|r| ct_eq(&r.otp_hash, presented))
        .filter(|r| !r.revoked && r.in_scope(cp_id, connector_id))
        .collect();
    let started = |r: &OtpRecord| r.valid_from.is_none_or(|f| f <= now);
    if let Some(r) = matching
        .iter()
        .filter(|r| started(r) && now <= r.valid_until && r.uses < r.max_uses)
        .min_by_key(|r| r.valid_until)
    {
        return OtpOutcome::Accepted {
            order_id: r.order_id.clone(),
        };
    }
    if let Some(r) = matching.iter().find(|r| started(r) && now <= r.valid_until) {
        return OtpOutcome::Used {
            order_id: r.order_id.clone(),
        };
    }
    if let Some(r) = matching.iter().find(|r| now > r.valid_until) {
        return OtpOutcome::Expired {
            order_id: r.order_id.clone(),
        };
    }
    OtpOutcome::Invalid
}

/// The order of a live OTP that `new` would clash with: same digits, overlapping scope and
/// validity, another order.
pub fn conflict<'a>(
    new: &OtpRecord,
    existing: &'a [OtpRecord],
    now: DateTime<Utc>,
) -> Option<&'a str> {
    existing
        .iter()
        .filter(|e| e.order_id != new.order_id && e.live(now))
        .find(|e| {
            ct_eq(&e.otp_hash, &new.otp_hash) && e.scope_overlaps(new) && e.window_overlaps(new)
        })
        .map(|e| e.order_id.as_str())
}

/// A presented tag as the store needs it: its OTP hash when it looks like an OTP, its
/// keyed tag hash (fleet cards are found by it), and what may be stored for it. Neither an
/// OTP nor an id tag is ever stored in clear: `otp:<hash>` or `tag:<hash>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Presented {
    /// Keyed hash, when the tag has an OTP's shape.
    pub otp_hash: Option<OtpHash>,
    /// Keyed hash of the tag as a card UID (case-insensitive).
    pub tag_hash: OtpHash,
    /// What is stored and compared for replays.
    pub tag_key: String,
}

/// The keyed hash of an id tag as a card UID: hex UIDs match whatever their case.
pub fn tag_hash(secret: &Secret, id_tag: &str) -> OtpHash {
    secret.hash(&format!("tag:{}", id_tag.to_ascii_uppercase()))
}

/// What is stored for an id tag that is not an OTP.
pub fn tag_key(secret: &Secret, id_tag: &str) -> String {
    format!("tag:{}", hex(&tag_hash(secret, id_tag)))
}

/// Prepares a presented id tag.
pub fn present(secret: &Secret, id_tag: &str) -> Presented {
    let tag_hash = tag_hash(secret, id_tag);
    if looks_like_otp(id_tag) {
        let h = secret.hash(id_tag);
        Presented {
            otp_hash: Some(h),
            tag_hash,
            tag_key: format!("otp:{}", hex(&h)),
        }
    } else {
        Presented {
            otp_hash: None,
            tag_hash,
            tag_key: format!("tag:{}", hex(&tag_hash)),
        }
    }
}

/// Prepares an id tag that is never an OTP, whatever its shape (an OCPP 2.0.1 idToken
/// whose type says it is a card or the agent's own token).
pub fn present_as_tag(secret: &Secret, id_tag: &str) -> Presented {
    let tag_hash = tag_hash(secret, id_tag);
    Presented {
        otp_hash: None,
        tag_hash,
        tag_key: format!("tag:{}", hex(&tag_hash)),
    }
}

/// `[auth] unknown_tags`: what happens to an id tag that is neither an OTP, an order's
/// code, nor a fleet card the site knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownTags {
    /// Refused (the default).
    #[default]
    Refuse,
    /// Accepted while the uplink is down, flagged `unknown_tag` for later settlement;
    /// refused while it is up.
    AcceptOffline,
}

/// A fleet card as stored (the tag itself only sealed; matched by its keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCard {
    /// Not valid after, if set.
    pub valid_until: Option<DateTime<Utc>>,
    /// The fleet it belongs to, if the BPP said.
    pub fleet: Option<String>,
}

/// Judges a tag that is not an OTP or an order's code: a fleet card the site knows is
/// accepted until its `valid_until` (then `expired`); an unknown one by the site's policy
/// (free vend accepts every tag).
pub fn check_tag_policy(
    tag_key: &str,
    card: Option<&FleetCard>,
    free_vend: bool,
    unknown: UnknownTags,
    uplink_online: bool,
    now: DateTime<Utc>,
) -> AuthDecision {
    let decided = |result, unverified| AuthDecision {
        method: AuthMethod::Rfid,
        result,
        order_id: None,
        tag_key: tag_key.to_string(),
        offline_counter: None,
        unverified,
    };
    match card {
        Some(c) if c.valid_until.is_some_and(|u| now > u) => decided(AuthResult::Expired, false),
        Some(_) => decided(AuthResult::Accepted, false),
        None if free_vend => decided(AuthResult::Accepted, false),
        None if unknown == UnknownTags::AcceptOffline && !uplink_online => {
            decided(AuthResult::Accepted, true)
        }
        None => decided(AuthResult::Invalid, false),
    }
}

/// Judges a tag that is not a known OTP: accepted only on a free-vend site.
pub fn check_tag(tag_key: &str, free_vend: bool) -> AuthDecision {
    check_tag_policy(
        tag_key,
        None,
        free_vend,
        UnknownTags::Refuse,
        true,
        DateTime::<Utc>::MIN_UTC,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(mins: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_000_000, 0).unwrap() + Duration::minutes(mins)
    }

    fn secret() -> Secret {
        Secret::from_bytes([7; 32])
    }

    fn record(order: &str, otp: &str) -> OtpRecord {
        OtpRecord {
            order_id: order.into(),
            otp_hash: secret().hash(otp),
            valid_from: Some(t(0)),
            valid_until: t(60),
            cp_id: Some("CP1".into()),
            connector_id: Some(1),
            max_uses: 1,
            uses: 0,
            revoked: false,
        }
    }

    fn check(
        r: &[OtpRecord],
        otp: &str,
        cp: &str,
        conn: Option<u32>,
        at: DateTime<Utc>,
    ) -> OtpOutcome {
        check_otp(&secret().hash(otp), r, cp, conn, at, false)
    }

    #[test]
    fn a_valid_otp_in_scope_and_window_is_accepted() {
        let r = [record("o1", "482913")];
        assert_eq!(
            check(&r, "482913", "CP1", Some(1), t(10)),
            OtpOutcome::Accepted {
                order_id: "o1".into()
            }
        );
        assert_eq!(
            check(&r, "482913", "CP1", None, t(10)).result().as_str(),
            "accepted",
            "Authorize has no connector"
        );
    }

    #[test]
    fn the_window_is_inclusive_at_both_ends() {
        let r = [record("o1", "482913")];
        assert_eq!(
            check(&r, "482913", "CP1", Some(1), t(0)).result().as_str(),
            "accepted"
        );
        assert_eq!(
            check(&r, "482913", "CP1", Some(1), t(60)).result().as_str(),
            "accepted"
        );
        let just_after = t(60) + Duration::milliseconds(1);
        assert_eq!(
            check(&r, "482913", "CP1", Some(1), just_after)
                .result()
                .as_str(),
            "expired"
        );
        let just_before = t(0) - Duration::milliseconds(1);
        assert_eq!(
            check(&r, "482913", "CP1", Some(1), just_before)
                .result()
                .as_str(),
            "invalid"
        );
    }

    #[test]
    fn scope_uses_and_revocation_are_enforced() {
        let mut r = record("o1", "482913");
        assert_eq!(
            check(&[r.clone()], "482913", "CP2", Some(1), t(5))
                .result()
                .as_str(),
            "invalid"
        );
        assert_eq!(
            check(&[r.clone()], "482913", "CP1", Some(2), t(5))
                .result()
                .as_str(),
            "invalid"
        );
        r.uses = 1;
        assert_eq!(
            check(&[r.clone()], "482913", "CP1", Some(1), t(5))
                .result()
                .as_str(),
            "used"
        );
        r.uses = 0;
        r.revoked = true;
        assert_eq!(
            check(&[r.clone()], "482913", "CP1", Some(1), t(5))
                .result()
                .as_str(),
            "invalid"
        );
        r.revoked = false;
        r.cp_id = None;
        r.connector_id = None;
        assert_eq!(
            check(&[r], "482913", "CP9", Some(4), t(5))
                .result()
                .as_str(),
            "accepted",
            "unscoped works anywhere"
        );
    }

    #[test]
    fn a_wrong_code_is_invalid_and_counts_as_a_failure() {
        let r = [record("o1", "482913")];
        let o = check(&r, "482914", "CP1", Some(1), t(5));
        assert_eq!(o, OtpOutcome::Invalid);
        assert!(o.is_failure());
        assert!(
            !check(&r, "482913", "CP1", Some(1), t(61)).is_failure(),
            "a stale real code is not a guess"
        );
    }

    #[test]
    fn five_wrong_codes_within_five_minutes_lock_for_five_minutes() {
        let l = Lockout::default();
        let f: Vec<_> = (0..5).map(|i| t(0) + Duration::seconds(i * 60)).collect();
        let until = l.locked_until(&f, t(4)).unwrap();
        assert_eq!(until, t(9));
        assert!(
            l.locked_until(&f, t(9)).is_none(),
            "unlocked at the boundary"
        );
        assert!(
            l.locked_until(&f[..4], t(4)).is_none(),
            "four are not enough"
        );
        let spread: Vec<_> = (0..5).map(|i| t(0) + Duration::seconds(i * 76)).collect();
        assert!(
            l.locked_until(&spread, t(6)).is_none(),
            "not within five minutes"
        );
        assert_eq!(
            check_otp(
                &secret().hash("482913"),
                &[record("o1", "482913")],
                "CP1",
                Some(1),
                t(5),
                true
            ),
            OtpOutcome::Blocked
        );
    }

    fn source(cp_id: &str, known: bool) -> Source<'_> {
        Source {
            cp_id,
            remote: Some("192.0.2.7"),
            known,
        }
    }

    #[test]
    fn a_site_over_its_budget_locks_unknown_ids_but_never_a_configured_charger_that_has_not_failed()
    {
        let l = Lockout::default();
        let over = Recent {
            charger: vec![],
            address: 0,
            site: l.site_max_failures,
        };
        assert_eq!(
            l.lock(&source("NEW-ID", false), &over, t(0)),
            Some(Lock::Site)
        );
        assert_eq!(l.lock(&source("CP1", true), &over, t(0)), None);
        let under = Recent {
            site: l.site_max_failures - 1,
            ..over.clone()
        };
        assert_eq!(l.lock(&source("NEW-ID", false), &under, t(0)), None);
    }

    #[test]
    fn a_configured_charger_that_itself_failed_within_the_hour_is_locked_by_the_site_budget() {
        let l = Lockout::default();
        let recent = Recent {
            charger: vec![t(-59)],
            address: 0,
            site: l.site_max_failures,
        };
        assert_eq!(
            l.lock(&source("CP1", true), &recent, t(0)),
            Some(Lock::Site)
        );
        let an_hour_ago = Recent {
            charger: vec![t(-60)],
            ..recent
        };
        assert_eq!(
            l.lock(&source("CP1", true), &an_hour_ago, t(0)),
            None,
            "its failure has left the window"
        );
    }

    #[test]
    fn an_address_over_its_budget_locks_its_guessing_sources_whatever_the_site_count() {
        let l = Lockout::default();
        let recent = Recent {
            charger: vec![],
            address: l.address_max_failures,
            site: l.address_max_failures,
        };
        assert_eq!(
            l.lock(&source("ROTATED-1", false), &recent, t(0)),
            Some(Lock::Address)
        );
        assert_eq!(
            l.lock(&source("CP1", true), &recent, t(0)),
            None,
            "a charger sharing the address that has not failed"
        );
        let no_address = Source {
            remote: None,
            ..source("ROTATED-1", false)
        };
        assert_eq!(l.lock(&no_address, &recent, t(0)), None);
    }

    #[test]
    fn the_per_charger_lockout_still_comes_first() {
        let l = Lockout::default();
        let recent = Recent {
            charger: (0..5).map(|i| t(-4) + Duration::seconds(i)).collect(),
            address: 0,
            site: 5,
        };
        assert_eq!(
            l.lock(&source("CP1", true), &recent, t(0)),
            Some(Lock::Charger)
        );
        assert!(l.horizon() >= l.budget_window && l.horizon() >= l.window + l.duration);
    }

    #[test]
    fn blocked_attempts_are_reported_once_a_minute_with_their_count() {
        let mut tally = BlockedTally::default();
        let cp1 = source("CP1", true);
        let first = tally.note(&cp1, Some(1), AuthMethod::Otp, t(0)).unwrap();
        assert_eq!((first.cp_id.as_str(), first.count), ("CP1", 1));
        for i in 1..100 {
            assert_eq!(
                tally.note(
                    &cp1,
                    Some(1),
                    AuthMethod::Otp,
                    t(0) + Duration::milliseconds(i * 500)
                ),
                None
            );
        }
        assert!(tally.flush(t(0) + Duration::seconds(59)).is_empty());
        let flushed = tally.flush(t(1));
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].count, 99);
        assert!(tally.flush(t(3)).is_empty(), "nothing more to say");
        assert!(tally.buckets.is_empty(), "a quiet charger is forgotten");
        let again = tally.note(&cp1, None, AuthMethod::Otp, t(4)).unwrap();
        assert_eq!(again.count, 1);
    }

    #[test]
    fn unknown_ids_share_one_blocked_report_so_rotating_ids_adds_no_events() {
        let mut tally = BlockedTally::default();
        let ids: Vec<String> = (0..1000).map(|i| format!("ROT-{i}")).collect();
        let reports = ids
            .iter()
            .filter_map(|id| tally.note(&source(id, false), None, AuthMethod::Otp, t(0)))
            .count();
        assert_eq!(reports, 1);
        let flushed = tally.flush(t(1));
        assert_eq!(flushed.len(), 1);
        assert_eq!(
            (flushed[0].cp_id.as_str(), flushed[0].count),
            ("ROT-999", 999)
        );
        assert_eq!(tally.buckets.len(), 1);
    }

    #[test]
    fn hotp_gives_the_rfc_4226_appendix_d_test_values() {
        let key = b"12345678901234567890";
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(hotp(key, counter as u64, 6), *want, "counter {counter}");
        }
        // the same truncation, kept to 8 digits (RFC 4226 Appendix D's decimal values)
        assert_eq!(hotp(key, 0, 8), "84755224");
        assert_eq!(hotp(key, 9, 8), "45520489");
    }

    fn window() -> OfflineWindow {
        OfflineWindow {
            key: b"12345678901234567890".to_vec(),
            digits: 6,
            lookahead: 3,
            highest: None,
            skipped: vec![],
            used: vec![],
            valid: Duration::minutes(60),
        }
    }

    #[test]
    fn a_derived_code_within_the_lookahead_is_accepted_and_one_beyond_it_is_not() {
        let w = window();
        assert_eq!(
            w.check(&secret().hash("755224"), &secret(), t(0)),
            OfflineMatch::Accepted(0)
        );
        assert_eq!(
            w.check(&secret().hash("359152"), &secret(), t(0)),
            OfflineMatch::Accepted(2)
        );
        assert_eq!(
            w.check(&secret().hash("969429"), &secret(), t(0)),
            OfflineMatch::None,
            "counter 3"
        );
        assert_eq!(
            w.check(&secret().hash("75522"), &secret(), t(0)),
            OfflineMatch::None,
            "too short"
        );
        let after = OfflineWindow {
            highest: Some(2),
            used: vec![2],
            skipped: vec![(0, t(0)), (1, t(0))],
            ..window()
        };
        assert_eq!(
            after.check(&secret().hash("359152"), &secret(), t(1)),
            OfflineMatch::Used(2)
        );
        assert_eq!(
            after.check(&secret().hash("287082"), &secret(), t(1)),
            OfflineMatch::Accepted(1),
            "skipped"
        );
        assert_eq!(
            after.check(&secret().hash("254676"), &secret(), t(1)),
            OfflineMatch::Accepted(5)
        );
        assert_eq!(
            after.check(&secret().hash("287922"), &secret(), t(1)),
            OfflineMatch::None,
            "6 is beyond 2 + 3"
        );
        assert_eq!(
            after.check(&secret().hash("287082"), &secret(), t(61)),
            OfflineMatch::Expired(1),
            "a skipped counter's time runs out"
        );
        assert_eq!(after.candidates(t(1)), vec![3, 4, 5, 0, 1]);
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_purpose() {
        let sealer = secret().sealer();
        let sealed = sealer.seal("offline-orders-key", b"key bytes").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"key bytes"));
        assert_eq!(
            sealer.open("offline-orders-key", &sealed).as_deref(),
            Some(&b"key bytes"[..])
        );
        assert_eq!(sealer.open("fleet-tag", &sealed), None, "another purpose");
        assert_eq!(
            Secret::from_bytes([8; 32])
                .sealer()
                .open("offline-orders-key", &sealed),
            None,
            "another site"
        );
        let mut altered = sealed.clone();
        altered[14] ^= 1;
        assert_eq!(sealer.open("offline-orders-key", &altered), None);
        assert_ne!(
            sealed,
            sealer.seal("offline-orders-key", b"key bytes").unwrap()
        );
    }

    #[test]
    fn same_digits_with_overlapping_scope_and_window_conflict() {
        let a = record("o1", "482913");
        let mut b = record("o2", "482913");
        assert_eq!(conflict(&b, std::slice::from_ref(&a), t(1)), Some("o1"));
        b.connector_id = Some(2);
        assert_eq!(
            conflict(&b, std::slice::from_ref(&a), t(1)),
            None,
            "another connector"
        );
        b.connector_id = None;
        assert_eq!(
            conflict(&b, std::slice::from_ref(&a), t(1)),
            Some("o1"),
            "any connector overlaps"
        );
        b.valid_from = Some(t(61));
        b.valid_until = t(120);
        assert_eq!(
            conflict(&b, std::slice::from_ref(&a), t(1)),
            None,
            "later window"
        );
        let same_order = record("o1", "482913");
        assert_eq!(
            conflict(&same_order, std::slice::from_ref(&a), t(1)),
            None,
            "an update of the same order"
        );
        let mut used = a.clone();
        used.uses = 1;
        assert_eq!(
            conflict(&record("o3", "482913"), &[used], t(1)),
            None,
            "a used-up OTP is not live"
        );
    }

    #[test]
    fn otps_are_hashed_with_the_site_key_and_never_kept_in_clear() {
        let p = present(&secret(), "482913");
        assert!(p.otp_hash.is_some());
        assert!(!p.tag_key.contains("482913"));
        assert_ne!(
            Secret::from_bytes([8; 32]).hash("482913"),
            secret().hash("482913")
        );
        let p = present(&secret(), "04A1B2C3D4E5F6");
        assert_eq!(p.otp_hash, None);
        assert!(p.tag_key.starts_with("tag:") && !p.tag_key.contains("04A1B2C3D4E5F6"));
        assert_eq!(
            present(&secret(), "04a1b2c3d4e5f6").tag_hash,
            p.tag_hash,
            "hex UIDs match whatever their case"
        );
        assert_eq!(
            present_as_tag(&secret(), "04a1b2c3d4e5f6").tag_key,
            p.tag_key
        );
        assert_eq!(
            present(&secret(), "12345678").tag_hash,
            present_as_tag(&secret(), "12345678").tag_hash,
            "a card whose UID is all digits is still found as a card"
        );
        assert!(!looks_like_otp("123"));
        assert!(!looks_like_otp("123456789"));
        assert!(!looks_like_otp("12a4"));
    }

    #[test]
    fn the_site_secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Secret::load_or_create(dir.path()).unwrap();
        let b = Secret::load_or_create(dir.path()).unwrap();
        assert_eq!(a.hash("1234"), b.hash("1234"));
        let mode = std::fs::metadata(dir.path().join("otp-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_fleet_card_is_accepted_until_its_validity_and_an_unknown_tag_by_the_site_policy() {
        let card = FleetCard {
            valid_until: Some(t(60)),
            fleet: Some("acme".into()),
        };
        let judge = |card: Option<&FleetCard>, unknown, online, at| {
            check_tag_policy("tag:x", card, false, unknown, online, at)
        };
        let d = judge(Some(&card), UnknownTags::Refuse, true, t(60));
        assert_eq!(
            (d.method, d.result, d.unverified),
            (AuthMethod::Rfid, AuthResult::Accepted, false)
        );
        assert_eq!(
            judge(Some(&card), UnknownTags::Refuse, true, t(61)).result,
            AuthResult::Expired
        );
        assert_eq!(
            judge(None, UnknownTags::Refuse, false, t(0)).result,
            AuthResult::Invalid
        );
        let d = judge(None, UnknownTags::AcceptOffline, false, t(0));
        assert_eq!(
            (d.result, d.unverified),
            (AuthResult::Accepted, true),
            "offline: settled later"
        );
        assert_eq!(
            judge(None, UnknownTags::AcceptOffline, true, t(0)).result,
            AuthResult::Invalid,
            "online, an unknown tag is refused"
        );
        let forever = FleetCard {
            valid_until: None,
            fleet: None,
        };
        assert_eq!(
            judge(Some(&forever), UnknownTags::Refuse, true, t(100_000)).result,
            AuthResult::Accepted
        );
    }

    #[test]
    fn a_tag_is_accepted_only_on_a_free_vend_site() {
        assert_eq!(check_tag("ABC", true).result, AuthResult::Accepted);
        assert_eq!(check_tag("ABC", false).result, AuthResult::Invalid);
        assert_eq!(AuthResult::Invalid.ocpp_status(), "Invalid");
        assert_eq!(AuthResult::Used.ocpp_status(), "Invalid");
        assert_eq!(AuthResult::Blocked.ocpp_status(), "Blocked");
        for r in ["accepted", "invalid", "expired", "used", "blocked"] {
            assert_eq!(AuthResult::parse(r).map(AuthResult::as_str), Some(r));
        }
        assert_eq!(AuthResult::parse("maybe"), None);
    }
}

//! The OCPP-J WebSocket handshake, decided without I/O: the request's path, its
//! `Authorization` and `Sec-WebSocket-Protocol` headers, the transport it came over (ws://,
//! or wss:// with the verified client certificate's subject) and what the config says
//! about the charger go in; accept (with the subprotocol, the security profile and the
//! serial binding), refuse (404, 401 or 429) or "complete without a subprotocol, then
//! close" comes out.
//!
//! The steps run in a fixed order, so a caller learns no more than it is entitled to: the
//! path must name a charger id (else 404), the id must be listed unless unknown chargers
//! are allowed (404), the transport must be at least its security profile (401), a
//! profile-3 charger's certificate must name it (401), a profile-1/2 charger with a
//! password hash must present Basic auth for its own id whose password verifies (401, or
//! 429 when the verifier is throttled), and only then is a subprotocol chosen.
//! Checking the password is the one expensive step (argon2, cached by the server), so it
//! is not done here: [`decide`] calls the verifier it is given, only for a charger that
//! needs it and only with credentials naming that charger.

use std::collections::HashMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::binding::{self, Identity, Mismatch};
use crate::config::ChargerEntry;

/// The OCPP 1.6 subprotocol name.
pub const OCPP16: &str = "ocpp1.6";
/// The OCPP 2.0.1 subprotocol name.
pub const OCPP201: &str = "ocpp2.0.1";

/// The subprotocols this server speaks, most preferred first: a charger offering both
/// gets 2.0.1.
pub const SUPPORTED: &[&str] = &[OCPP201, OCPP16];

/// Longest charger id accepted in the path.
pub const MAX_CP_ID_LEN: usize = 48;

/// The parts of a charger's upgrade request the decision needs, as raw header bytes
/// (a header that is not visible ASCII is treated as unreadable, not as a crash).
#[derive(Debug, Clone, Default)]
pub struct Upgrade<'a> {
    /// The request path, without the query.
    pub path: &'a str,
    /// Every `Authorization` header value, in order.
    pub authorization: Vec<&'a [u8]>,
    /// Every `Sec-WebSocket-Protocol` header value, in order (each may list several).
    pub protocols: Vec<&'a [u8]>,
    /// The connection it came over.
    pub transport: Transport<'a>,
}

/// What the request came over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport<'a> {
    /// `ws://`.
    #[default]
    Plain,
    /// `wss://`, with the subject of the client certificate rustls verified against
    /// `client_ca_file`, if the charger presented one.
    Tls {
        /// The verified leaf's subject.
        client: Option<&'a Identity>,
    },
}

/// What the config says about chargers, borrowed from `[ocpp]`.
#[derive(Debug, Clone, Copy)]
pub struct Chargers<'a> {
    /// `allow_unknown_chargers`.
    pub allow_unknown: bool,
    /// Listed chargers by id.
    pub listed: &'a HashMap<String, ChargerEntry>,
    /// `[ocpp] assume_subprotocol`: what a charger offering none is taken to speak.
    pub assume: Option<&'static str>,
    /// `[ocpp] cpo_name`: the O= a profile-3 certificate must carry.
    pub cpo_name: Option<&'a str>,
}

/// A password to check against a listed charger's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The charger id, which is also the Basic auth user.
    pub cp_id: &'a str,
    /// The password presented.
    pub password: &'a str,
    /// The charger's argon2 PHC hash from the config.
    pub hash: &'a str,
}

/// What the password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The password is the charger's.
    Yes,
    /// It is not.
    No,
    /// Not checked: too many failures lately from this address or for this id, or too
    /// many argon2 runs at once (the guard's 429, answered without argon2).
    Throttled,
}

impl From<bool> for Verified {
    fn from(ok: bool) -> Self {
        if ok {
            Verified::Yes
        } else {
            Verified::No
        }
    }
}

/// Why a handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path is not `/ocpp/<chargePointId>` with a valid id.
    BadPath,
    /// The id is not listed and unknown chargers are not allowed.
    UnknownCharger,
    /// No readable Basic auth (none, several, another scheme, broken base64).
    MissingCredentials,
    /// Basic auth for another user, or a password that does not verify.
    WrongCredentials,
    /// Plain `ws://` for a charger whose profile needs TLS.
    Downgrade,
    /// Profile 3 without a client certificate.
    CertificateMissing,
    /// Profile 3 with a certificate that does not name this charger.
    CertificateMismatch(Mismatch),
    /// Too many failed handshakes lately from this address or for this id: answered
    /// without checking anything.
    Throttled,
}

impl Refusal {
    /// The HTTP status the refusal is answered with (OCPP-J: 404 or 401).
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadPath | Refusal::UnknownCharger => 404,
            Refusal::MissingCredentials
            | Refusal::WrongCredentials
            | Refusal::Downgrade
            | Refusal::CertificateMissing
            | Refusal::CertificateMismatch(_) => 401,
            Refusal::Throttled => 429,
        }
    }

    /// The `security.event` kind (CONTRACT §4) and `/metrics` reason of the refusal;
    /// `None` for a path that names no charger (a prober, not a security event).
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::BadPath => return None,
            Refusal::UnknownCharger => "unknown_charger",
            Refusal::MissingCredentials => "auth_missing",
            Refusal::WrongCredentials => "auth_failed",
            Refusal::Downgrade => "profile_downgrade",
            Refusal::CertificateMissing => "certificate_missing",
            Refusal::CertificateMismatch(_) => "certificate_mismatch",
            Refusal::Throttled => "throttled",
        })
    }

    /// The response body: enough for a person at the charger, nothing for a prober.
    pub fn body(&self) -> &'static str {
        match self {
            Refusal::BadPath => "use /ocpp/<chargePointId>",
            Refusal::UnknownCharger => "unknown charger",
            // One text for both, so a prober cannot tell a user name from a password.
            Refusal::MissingCredentials | Refusal::WrongCredentials => "authentication required",
            Refusal::Downgrade => "this charger must connect over wss://",
            Refusal::CertificateMissing | Refusal::CertificateMismatch(_) => {
                "a client certificate for this charger is required"
            }
            Refusal::Throttled => "too many failed attempts; retry later",
        }
    }
}

/// Which subprotocol a charger gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// Offered by the charger: echoed in the response.
    Agreed(&'static str),
    /// The charger offered none; assumed, and not echoed (it did not ask for one).
    Assumed(&'static str),
}

impl Subprotocol {
    /// The version spoken on the connection.
    pub fn name(self) -> &'static str {
        match self {
            Subprotocol::Agreed(p) | Subprotocol::Assumed(p) => p,
        }
    }
}

/// What the handshake decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve the charger with this subprotocol.
    Accept {
        /// The charger id from the path.
        cp_id: String,
        /// The subprotocol, and whether to echo it.
        subprotocol: Subprotocol,
        /// The serial numbers its BootNotification must report.
        serial: binding::BoundSerial,
        /// The security profile it connected with (at least its configured one).
        profile: u8,
    },
    /// Answer with an HTTP error instead of upgrading.
    Refuse(Refusal),
    /// OCPP-J: the charger offered only versions we do not speak; complete the handshake
    /// without the header and close the socket at once.
    NoSubprotocol {
        /// The charger id from the path.
        cp_id: String,
    },
}

/// Decides the handshake; `verify` checks a password against a hash and is called at
/// most once, only for a listed charger with a hash that presented credentials for its
/// own id.
pub fn decide(
    req: &Upgrade<'_>,
    chargers: Chargers<'_>,
    verify: impl FnOnce(Credentials<'_>) -> Verified,
) -> Decision {
    let Some(cp_id) = cp_id_from_path(req.path) else {
        return Decision::Refuse(Refusal::BadPath);
    };
    let listed = chargers.listed.get(cp_id);
    if listed.is_none() && !chargers.allow_unknown {
        return Decision::Refuse(Refusal::UnknownCharger);
    }
    let profile = listed.map_or(1, |c| c.security_profile);
    let tls_client = match req.transport {
        Transport::Plain if profile >= 2 => return Decision::Refuse(Refusal::Downgrade),
        Transport::Plain => None,
        Transport::Tls { client } => client,
    };
    let mut serial = binding::BoundSerial {
        configured: listed.and_then(|c| c.serial.clone()),
        certificate: None,
    };
    if profile == 3 {
        // Mutual TLS: the certificate is the credential (the whitepaper's profile 3 has
        // no Basic auth); it must name this charger.
        let Some(identity) = tls_client else {
            return Decision::Refuse(Refusal::CertificateMissing);
        };
        let expected = listed.and_then(|c| c.cert_cn.as_deref()).unwrap_or(cp_id);
        if let Err(m) = binding::names_charger(identity, expected, chargers.cpo_name) {
            return Decision::Refuse(Refusal::CertificateMismatch(m));
        }
        serial.certificate = identity.serial.clone();
    } else if let Some(hash) = listed.and_then(|c| c.password_hash.as_deref()) {
        let presented = match req.authorization.as_slice() {
            [one] => visible_ascii(one).and_then(basic_credentials),
            // Several Authorization headers are ambiguous (RFC 9110 allows one); none is
            // missing. Either way there is nothing to verify.
            _ => None,
        };
        let Some((user, password)) = presented else {
            return Decision::Refuse(Refusal::MissingCredentials);
        };
        // The user must be the charger itself (OCPP security profile 1), so one
        // charger's password never opens another's id; no argon2 run for a mismatch.
        if user != cp_id {
            return Decision::Refuse(Refusal::WrongCredentials);
        }
        match verify(Credentials {
            cp_id,
            password: &password,
            hash,
        }) {
            Verified::Yes => {}
            Verified::No => return Decision::Refuse(Refusal::WrongCredentials),
            Verified::Throttled => return Decision::Refuse(Refusal::Throttled),
        }
    }
    let offered: Vec<String> = req
        .protocols
        .iter()
        .filter_map(|v| visible_ascii(v))
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    let cp_id = cp_id.to_string();
    let profile = match req.transport {
        Transport::Plain => 1,
        Transport::Tls { .. } => profile.max(2),
    };
    match select_subprotocol(&offered, SUPPORTED, chargers.assume) {
        Some(subprotocol) => Decision::Accept {
            cp_id,
            subprotocol,
            serial,
            profile,
        },
        None => Decision::NoSubprotocol { cp_id },
    }
}

/// Picks the first of `supported` (our preference order) that the charger `offered`
/// (lowercased names); when it offered none, `assume` if set. `None`: nothing in common.
pub fn select_subprotocol(
    offered: &[String],
    supported: &[&'static str],
    assume: Option<&'static str>,
) -> Option<Subprotocol> {
    if offered.is_empty() {
        return assume.map(Subprotocol::Assumed);
    }
    supported
        .iter()
        .copied()
        .find(|s| offered.iter().any(|o| o == s))
        .map(Subprotocol::Agreed)
}

/// The charger id in `/ocpp/<chargePointId>`, if the path is that and the id is valid.
pub fn cp_id_from_path(path: &str) -> Option<&str> {
    path.strip_prefix("/ocpp/").filter(|id| valid_cp_id(id))
}

/// Charge point ids: 1–48 characters of `[A-Za-z0-9._:-]`, not only dots. No slashes or
/// escapes, so the id is safe as a file name, an SQL value and an MQTT topic level; `.`
/// and `..` would be path segments in every one of those (`connectors/../1`).
pub fn valid_cp_id(id: &str) -> bool {
    (1..=MAX_CP_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        && !id.bytes().all(|b| b == b'.')
}

/// Base64 as RFC 7617 uses it, lenient about padding: some charger firmware leaves the
/// `=` off, and the padding carries no information.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `Basic <base64(user:password)>` -> (user, password); `None` for any other shape.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC_B64.decode(b64.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    // RFC 7617: the user id cannot contain a colon, the password can.
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// A header value as text, as `http::HeaderValue::to_str` reads it (visible ASCII).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(entries: &[(&str, Option<&str>)]) -> HashMap<String, ChargerEntry> {
        entries
            .iter()
            .map(|(id, h)| (id.to_string(), ChargerEntry::basic(h.map(str::to_string))))
            .collect()
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    /// Decides with a verifier that accepts "s3cret" and counts its calls.
    fn decide_with(
        path: &str,
        auth: &[&str],
        protocols: &[&str],
        allow_unknown: bool,
        chargers: &HashMap<String, ChargerEntry>,
    ) -> (Decision, usize) {
        decide_assuming(path, auth, protocols, allow_unknown, chargers, None)
    }

    fn decide_assuming(
        path: &str,
        auth: &[&str],
        protocols: &[&str],
        allow_unknown: bool,
        chargers: &HashMap<String, ChargerEntry>,
        assume: Option<&'static str>,
    ) -> (Decision, usize) {
        let req = Upgrade {
            path,
            authorization: auth.iter().map(|a| a.as_bytes()).collect(),
            protocols: protocols.iter().map(|p| p.as_bytes()).collect(),
            transport: Transport::Plain,
        };
        let mut calls = 0;
        let d = decide(
            &req,
            Chargers {
                allow_unknown,
                listed: chargers,
                assume,
                cpo_name: None,
            },
            |c| {
                calls += 1;
                (c.password == "s3cret" && c.hash == "HASH").into()
            },
        );
        (d, calls)
    }

    fn accepted(cp_id: &str, subprotocol: Subprotocol) -> Decision {
        Decision::Accept {
            cp_id: cp_id.into(),
            subprotocol,
            serial: binding::BoundSerial::default(),
            profile: 1,
        }
    }

    /// Decides over `transport` for a charger `CP1` with `entry`, operator `ACME`.
    fn decide_over(entry: ChargerEntry, auth: &[&str], transport: Transport<'_>) -> Decision {
        let cfg: HashMap<String, ChargerEntry> = [("CP1".to_string(), entry)].into();
        let req = Upgrade {
            path: "/ocpp/CP1",
            authorization: auth.iter().map(|a| a.as_bytes()).collect(),
            protocols: vec![OCPP201.as_bytes()],
            transport,
        };
        let chargers = Chargers {
            allow_unknown: false,
            listed: &cfg,
            assume: None,
            cpo_name: Some("ACME"),
        };
        decide(&req, chargers, |c| {
            (c.password == "s3cret" && c.hash == "HASH").into()
        })
    }

    fn profile(n: u8) -> ChargerEntry {
        ChargerEntry {
            security_profile: n,
            password_hash: (n == 2).then(|| "HASH".to_string()),
            cert_cn: None,
            serial: None,
            max_power_w: crate::config::DEFAULT_CONNECTOR_POWER_W,
            phases: 3,
        }
    }

    fn subject(cn: &str, o: &str) -> Identity {
        Identity {
            cn: Some(cn.into()),
            o: Some(o.into()),
            serial: Some("SN-7".into()),
        }
    }

    #[test]
    fn a_profile_2_or_3_charger_over_plain_ws_is_a_downgrade_refused_with_401() {
        for n in [2, 3] {
            let d = decide_over(profile(n), &[&basic("CP1", "s3cret")], Transport::Plain);
            assert_eq!(d, Decision::Refuse(Refusal::Downgrade), "profile {n}");
        }
        assert_eq!(Refusal::Downgrade.status(), 401);
        assert_eq!(Refusal::Downgrade.kind(), Some("profile_downgrade"));
    }

    #[test]
    fn a_profile_2_charger_over_tls_needs_its_password() {
        let tls = Transport::Tls { client: None };
        let ok = decide_over(profile(2), &[&basic("CP1", "s3cret")], tls);
        assert!(matches!(ok, Decision::Accept { profile: 2, .. }), "{ok:?}");
        let wrong = decide_over(profile(2), &[&basic("CP1", "guess")], tls);
        assert_eq!(wrong, Decision::Refuse(Refusal::WrongCredentials));
        let none = decide_over(profile(2), &[], tls);
        assert_eq!(none, Decision::Refuse(Refusal::MissingCredentials));
    }

    #[test]
    fn a_profile_1_charger_may_come_over_tls_and_is_then_served_at_profile_2() {
        let d = decide_over(profile(1), &[], Transport::Tls { client: None });
        assert!(matches!(d, Decision::Accept { profile: 2, .. }), "{d:?}");
    }

    #[test]
    fn a_profile_3_charger_is_accepted_with_its_own_certificate_and_bound_to_its_serial() {
        let own = subject("CP1", "ACME");
        let d = decide_over(profile(3), &[], Transport::Tls { client: Some(&own) });
        match d {
            Decision::Accept {
                profile, serial, ..
            } => {
                assert_eq!(profile, 3);
                assert_eq!(serial.certificate.as_deref(), Some("SN-7"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_profile_3_charger_with_another_chargers_certificate_from_the_same_ca_is_refused() {
        let other = subject("CP2", "ACME");
        let d = decide_over(
            profile(3),
            &[],
            Transport::Tls {
                client: Some(&other),
            },
        );
        assert_eq!(
            d,
            Decision::Refuse(Refusal::CertificateMismatch(Mismatch::Cn("CP2".into())))
        );
        let foreign_operator = subject("CP1", "Other CPO");
        let d = decide_over(
            profile(3),
            &[],
            Transport::Tls {
                client: Some(&foreign_operator),
            },
        );
        assert!(matches!(
            d,
            Decision::Refuse(Refusal::CertificateMismatch(Mismatch::Organization(_)))
        ));
    }

    #[test]
    fn a_profile_3_charger_without_a_certificate_is_refused_even_with_a_password() {
        let mut entry = profile(3);
        entry.password_hash = Some("HASH".into());
        let d = decide_over(
            entry,
            &[&basic("CP1", "s3cret")],
            Transport::Tls { client: None },
        );
        assert_eq!(d, Decision::Refuse(Refusal::CertificateMissing));
    }

    #[test]
    fn cert_cn_names_the_cn_a_profile_3_charger_certificate_carries() {
        let mut entry = profile(3);
        entry.cert_cn = Some("serial-0042.acme".into());
        let cert = subject("serial-0042.acme", "ACME");
        let d = decide_over(
            entry.clone(),
            &[],
            Transport::Tls {
                client: Some(&cert),
            },
        );
        assert!(matches!(d, Decision::Accept { profile: 3, .. }), "{d:?}");
        let by_id = subject("CP1", "ACME");
        let d = decide_over(
            entry,
            &[],
            Transport::Tls {
                client: Some(&by_id),
            },
        );
        assert!(matches!(
            d,
            Decision::Refuse(Refusal::CertificateMismatch(_))
        ));
    }

    const AGREED: Subprotocol = Subprotocol::Agreed(OCPP16);

    #[test]
    fn a_path_of_only_dots_is_not_a_charger_id() {
        let none = listed(&[]);
        for path in ["/ocpp/.", "/ocpp/..", "/ocpp/..."] {
            let (d, _) = decide_with(path, &[], &[OCPP16], true, &none);
            assert_eq!(d, Decision::Refuse(Refusal::BadPath), "{path}");
        }
        assert_eq!(Refusal::BadPath.status(), 404);
        assert!(valid_cp_id("a.b"), "dots inside an id are fine");
        assert!(valid_cp_id(".a"));
    }

    #[test]
    fn only_ocpp_slash_and_a_well_formed_id_are_charger_paths() {
        assert_eq!(cp_id_from_path("/ocpp/CP001"), Some("CP001"));
        assert_eq!(cp_id_from_path("/ocpp/site.cp-1:a"), Some("site.cp-1:a"));
        for path in [
            "/ocpp/",
            "/ocpp",
            "/other/CP001",
            "/ocpp/a/b",
            "/ocpp/%2e%2e",
            "/ocpp/CP 1",
            "/ocpp/CPé",
        ] {
            assert_eq!(cp_id_from_path(path), None, "{path}");
        }
        assert!(valid_cp_id(&"x".repeat(MAX_CP_ID_LEN)));
        assert!(!valid_cp_id(&"x".repeat(MAX_CP_ID_LEN + 1)));
    }

    #[test]
    fn an_unlisted_charger_gets_404_unless_unknown_chargers_are_allowed() {
        let cfg = listed(&[("CP001", None)]);
        let (d, _) = decide_with("/ocpp/NOPE", &[], &[OCPP16], false, &cfg);
        assert_eq!(d, Decision::Refuse(Refusal::UnknownCharger));
        assert_eq!(Refusal::UnknownCharger.status(), 404);
        let (d, _) = decide_with("/ocpp/NOPE", &[], &[OCPP16], true, &cfg);
        assert_eq!(d, accepted("NOPE", AGREED));
    }

    #[test]
    fn a_listed_charger_without_a_hash_needs_no_credentials() {
        let cfg = listed(&[("CP001", None)]);
        let (d, calls) = decide_with("/ocpp/CP001", &[], &[OCPP16], false, &cfg);
        assert_eq!(d, accepted("CP001", AGREED));
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_listed_charger_without_credentials_gets_401() {
        let cfg = listed(&[("CP001", Some("HASH"))]);
        let (d, calls) = decide_with("/ocpp/CP001", &[], &[OCPP16], false, &cfg);
        assert_eq!(d, Decision::Refuse(Refusal::MissingCredentials));
        assert_eq!(Refusal::MissingCredentials.status(), 401);
        assert_eq!(calls, 0);
    }

    #[test]
    fn the_right_password_for_the_charger_itself_is_accepted() {
        let cfg = listed(&[("CP001", Some("HASH"))]);
        let auth = basic("CP001", "s3cret");
        let (d, calls) = decide_with("/ocpp/CP001", &[&auth], &[OCPP16], false, &cfg);
        assert_eq!(d, accepted("CP001", AGREED));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_wrong_password_gets_401() {
        let cfg = listed(&[("CP001", Some("HASH"))]);
        let auth = basic("CP001", "wrong");
        let (d, calls) = decide_with("/ocpp/CP001", &[&auth], &[OCPP16], false, &cfg);
        assert_eq!(d, Decision::Refuse(Refusal::WrongCredentials));
        assert_eq!(Refusal::WrongCredentials.status(), 401);
        assert_eq!(calls, 1);
    }

    #[test]
    fn basic_auth_for_another_user_is_refused() {
        let cfg = listed(&[("CP001", Some("HASH")), ("CP002", Some("HASH"))]);
        let auth = basic("CP002", "s3cret");
        let (d, calls) = decide_with("/ocpp/CP001", &[&auth], &[OCPP16], false, &cfg);
        assert_eq!(d, Decision::Refuse(Refusal::WrongCredentials));
        assert_eq!(calls, 0, "no argon2 run for another charger's credentials");
    }

    #[test]
    fn unreadable_or_ambiguous_authorization_counts_as_missing() {
        let cfg = listed(&[("CP001", Some("HASH"))]);
        let good = basic("CP001", "s3cret");
        for auth in [
            vec!["Bearer abc"],
            vec!["Basic !!!"],
            vec!["Basic"],
            vec!["Basic Q1AwMDE="], // "CP001", no colon
            vec![good.as_str(), good.as_str()],
        ] {
            let (d, calls) = decide_with("/ocpp/CP001", &auth, &[OCPP16], false, &cfg);
            assert_eq!(d, Decision::Refuse(Refusal::MissingCredentials), "{auth:?}");
            assert_eq!(calls, 0);
        }
        let req = Upgrade {
            path: "/ocpp/CP001",
            authorization: vec![b"Basic \xff"],
            protocols: vec![],
            transport: Transport::Plain,
        };
        let chargers = Chargers {
            allow_unknown: false,
            listed: &cfg,
            assume: None,
            cpo_name: None,
        };
        assert_eq!(
            decide(&req, chargers, |_| Verified::Yes),
            Decision::Refuse(Refusal::MissingCredentials)
        );
    }

    #[test]
    fn credentials_are_checked_before_the_subprotocol() {
        let cfg = listed(&[("CP001", Some("HASH"))]);
        let (d, _) = decide_with("/ocpp/CP001", &[], &["ocpp9.9"], false, &cfg);
        assert_eq!(d, Decision::Refuse(Refusal::MissingCredentials));
    }

    #[test]
    fn basic_credentials_decode_with_or_without_padding() {
        // "CP001:s3cret"
        let expected = Some(("CP001".to_string(), "s3cret".to_string()));
        assert_eq!(basic_credentials("Basic Q1AwMDE6czNjcmV0"), expected);
        assert_eq!(basic_credentials("basic  Q1AwMDE6czNjcmV0 "), expected);
        // "CP001:pw" with and without its padding
        let pw = Some(("CP001".to_string(), "pw".to_string()));
        assert_eq!(basic_credentials("Basic Q1AwMDE6cHc="), pw);
        assert_eq!(basic_credentials("Basic Q1AwMDE6cHc"), pw);
        assert_eq!(
            basic_credentials(&basic("CP001", "a:b")),
            Some(("CP001".into(), "a:b".into())),
            "a password may contain a colon"
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }

    #[test]
    fn a_charger_offering_ocpp16_among_others_gets_it_echoed() {
        let none = listed(&[]);
        let (d, _) = decide_with("/ocpp/CP1", &[], &["ocpp9, ocpp1.6"], true, &none);
        assert_eq!(d, accepted("CP1", AGREED));
        let (d, _) = decide_with("/ocpp/CP1", &[], &["ocpp2.0", "OCPP1.6"], true, &none);
        assert_eq!(d, accepted("CP1", AGREED));
    }

    #[test]
    fn a_charger_offering_both_versions_gets_ocpp201_whatever_its_order() {
        let none = listed(&[]);
        for offer in [&["ocpp1.6, ocpp2.0.1"][..], &["ocpp2.0.1", "ocpp1.6"][..]] {
            let (d, _) = decide_with("/ocpp/CP1", &[], offer, true, &none);
            assert_eq!(d, accepted("CP1", Subprotocol::Agreed(OCPP201)));
        }
    }

    #[test]
    fn a_charger_offering_no_subprotocol_is_not_guessed_at() {
        let none = listed(&[]);
        for offer in [&[][..], &[" , "][..]] {
            let (d, _) = decide_with("/ocpp/CP1", &[], offer, true, &none);
            assert_eq!(
                d,
                Decision::NoSubprotocol {
                    cp_id: "CP1".into()
                }
            );
        }
    }

    #[test]
    fn a_charger_offering_no_subprotocol_speaks_the_assumed_one_when_configured() {
        let none = listed(&[]);
        let (d, _) = decide_assuming("/ocpp/CP1", &[], &[], true, &none, Some(OCPP16));
        assert_eq!(d, accepted("CP1", Subprotocol::Assumed(OCPP16)));
    }

    #[test]
    fn a_charger_offering_only_unsupported_versions_gets_no_subprotocol() {
        let none = listed(&[]);
        let (d, _) = decide_with("/ocpp/CP1", &[], &["ocpp9.9, ocpp2.0"], true, &none);
        assert_eq!(
            d,
            Decision::NoSubprotocol {
                cp_id: "CP1".into()
            }
        );
    }

    #[test]
    fn the_first_supported_version_in_our_order_wins() {
        let offered = vec!["ocpp1.6".to_string(), "ocpp2.0.1".to_string()];
        assert_eq!(
            select_subprotocol(&offered, &["ocpp2.0.1", "ocpp1.6"], None),
            Some(Subprotocol::Agreed("ocpp2.0.1"))
        );
        assert_eq!(
            select_subprotocol(&offered, &["ocpp1.6", "ocpp2.0.1"], None),
            Some(Subprotocol::Agreed("ocpp1.6"))
        );
        assert_eq!(select_subprotocol(&[], &["ocpp2.0.1"], None), None);
        assert_eq!(
            select_subprotocol(&[], &["ocpp2.0.1"], Some("ocpp1.6")),
            Some(Subprotocol::Assumed("ocpp1.6"))
        );
    }
}

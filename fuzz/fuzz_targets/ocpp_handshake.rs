//! The WebSocket handshake decision, `ocpp::handshake::{decide, basic_credentials,
//! cp_id_from_path}`, on arbitrary requests and charger lists. Beyond "no panic":
//! - `cp_id_from_path` only yields ids `valid_cp_id` accepts;
//! - `decide` calls the password check at most once, only for a listed charger with a
//!   hash, with credentials whose user is that charger's id;
//! - an accepted (or subprotocol-less) charger is the one named in the path, and is
//!   listed unless unknown chargers are allowed;
//! - a charger is never accepted below its security profile: profile 2 or 3 never over
//!   plain ws, profile 3 only with a certificate whose CN names it.
#![no_main]

use std::cell::Cell;
use std::collections::HashMap;

use arbitrary::Arbitrary;
use chargesite::config::ChargerEntry;
use chargesite::ocpp::binding::Identity;
use chargesite::ocpp::handshake::{
    basic_credentials, cp_id_from_path, decide, valid_cp_id, Chargers, Decision, Refusal,
    Transport, Upgrade, Verified, MAX_CP_ID_LEN,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    path: &'a str,
    /// Appended to `/ocpp/` for a second path, so valid ids are common.
    id: &'a str,
    use_id: bool,
    authorization: Vec<&'a [u8]>,
    protocols: Vec<&'a [u8]>,
    allow_unknown: bool,
    /// `[ocpp] assume_subprotocol` set to `ocpp1.6`.
    assume_16: bool,
    listed: Vec<(&'a str, Option<&'a str>)>,
    /// List the path's own id too (with this hash), so the auth branch is reached.
    list_self: Option<Option<&'a str>>,
    verify_answer: bool,
    header: &'a str,
    /// The security profile of the path's own id when `list_self` lists it (mod 3, + 1).
    self_profile: u8,
    /// Over wss://, with a client certificate of this CN when `Some`.
    tls: Option<Option<&'a str>>,
}

fuzz_target!(|input: Input<'_>| {
    if let Some((user, pass)) = basic_credentials(input.header) {
        assert!(!user.contains(':'));
        let _ = pass;
    }
    let own_path = format!("/ocpp/{}", input.id);
    let path = if input.use_id {
        own_path.as_str()
    } else {
        input.path
    };
    let from_path = cp_id_from_path(path);
    if let Some(id) = from_path {
        assert!(valid_cp_id(id) && id.len() <= MAX_CP_ID_LEN);
    }

    let mut listed: HashMap<String, ChargerEntry> = input
        .listed
        .iter()
        .map(|(id, h)| (id.to_string(), ChargerEntry::basic(h.map(str::to_string))))
        .collect();
    if let (Some(hash), Some(id)) = (input.list_self, from_path) {
        let mut entry = ChargerEntry::basic(hash.map(str::to_string));
        entry.security_profile = input.self_profile % 3 + 1;
        listed.insert(id.to_string(), entry);
    }
    let identity = input.tls.flatten().map(|cn| Identity {
        cn: Some(cn.to_string()),
        o: None,
        serial: None,
    });
    let transport = match input.tls {
        None => Transport::Plain,
        Some(_) => Transport::Tls {
            client: identity.as_ref(),
        },
    };
    let req = Upgrade {
        path,
        authorization: input.authorization.clone(),
        protocols: input.protocols.clone(),
        transport,
    };
    let calls = Cell::new(0u32);
    let decision = decide(
        &req,
        Chargers {
            allow_unknown: input.allow_unknown,
            listed: &listed,
            assume: input.assume_16.then_some("ocpp1.6"),
            cpo_name: None,
        },
        |c| {
            calls.set(calls.get() + 1);
            let id = from_path.expect("verify called without an id in the path");
            assert_eq!(c.cp_id, id);
            assert_eq!(
                listed.get(id).and_then(|e| e.password_hash.as_deref()),
                Some(c.hash)
            );
            Verified::from(input.verify_answer)
        },
    );
    assert!(calls.get() <= 1);
    match &decision {
        Decision::Accept {
            cp_id, subprotocol, ..
        } => {
            let profile = listed.get(cp_id).map_or(1, |e| e.security_profile);
            if profile >= 2 {
                assert!(input.tls.is_some(), "a profile-{profile} charger accepted over ws://");
            }
            if profile == 3 {
                assert_eq!(input.tls.flatten(), Some(cp_id.as_str()), "profile 3 without its own certificate");
            }
            assert_eq!(Some(cp_id.as_str()), from_path);
            assert!(chargesite::ocpp::handshake::SUPPORTED.contains(&subprotocol.name()));
            if let chargesite::ocpp::handshake::Subprotocol::Assumed(_) = subprotocol {
                assert!(input.assume_16, "a subprotocol assumed without the config saying so");
            }
            assert!(input.allow_unknown || listed.contains_key(cp_id));
            if let Some(ChargerEntry {
                password_hash: Some(_),
                security_profile: 1 | 2,
                ..
            }) = listed.get(cp_id)
            {
                assert_eq!(calls.get(), 1, "a charger with a hash accepted unverified");
                assert!(input.verify_answer);
            }
        }
        Decision::NoSubprotocol { cp_id } => {
            assert_eq!(Some(cp_id.as_str()), from_path);
            assert!(input.allow_unknown || listed.contains_key(cp_id));
            if let Some(ChargerEntry {
                password_hash: Some(_),
                security_profile: 1 | 2,
                ..
            }) = listed.get(cp_id)
            {
                assert_eq!(calls.get(), 1, "a charger with a hash accepted unverified");
                assert!(input.verify_answer);
            }
        }
        Decision::Refuse(Refusal::BadPath) => assert!(from_path.is_none()),
        Decision::Refuse(r) => {
            assert!(from_path.is_some());
            assert!(matches!(r.status(), 401 | 404 | 429));
        }
    }
});

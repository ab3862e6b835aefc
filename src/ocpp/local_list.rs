//! Fleet cards onto the chargers' own local authorization lists, so that a charger cut off
//! from the gateway keeps accepting them (issue 14). Pure: given the site's list and its
//! version, the version a charger holds, its version and its per-message limit
//! (1.6 `SendLocalListMaxLength`, 2.0.1 `LocalAuthListCtrlr.ItemsPerMessage`), the
//! SendLocalList CALLs that bring it up to date.
//!
//! The first CALL is a `Full` update (it replaces whatever the charger holds, a stale or
//! foreign list included); a list longer than one message continues with `Differential`
//! updates of the same version, which add the rest. The charger then reports the site's
//! version to GetLocalListVersion, and nothing is sent until the list changes.

use super::commands::{Command, LocalEntry};
use super::frame::Version;

/// The most entries per SendLocalList when the charger does not say (a conservative
/// figure: chargers commonly take 20 to 250).
pub const DEFAULT_PER_MESSAGE: usize = 20;

/// An OCPP 1.6 `idTag` is a CiString20: a longer UID cannot be on a 1.6 charger's list
/// (the gateway still accepts it at that charger while it is connected).
pub const V16_MAX_TAG: usize = 20;

/// The SendLocalList CALLs that bring a charger speaking `version`, holding
/// `charger_version` (`None`: unknown, or no list), up to the site's list `entries` at
/// `site_version`; empty when it already holds that version.
pub fn plan(
    version: Version,
    site_version: i32,
    charger_version: Option<i32>,
    entries: &[LocalEntry],
    per_message: usize,
) -> Vec<Command> {
    if charger_version == Some(site_version) {
        return Vec::new();
    }
    let fits: Vec<LocalEntry> = entries
        .iter()
        .filter(|e| version != Version::V16 || e.id_tag.len() <= V16_MAX_TAG)
        .cloned()
        .collect();
    if fits.is_empty() {
        return vec![Command::SendLocalList {
            version: site_version,
            full: true,
            entries: Vec::new(),
        }];
    }
    fits.chunks(per_message.max(1))
        .enumerate()
        .map(|(i, chunk)| Command::SendLocalList {
            version: site_version,
            full: i == 0,
            entries: chunk.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocpp::commands::request;

    fn card(i: usize, len: usize) -> LocalEntry {
        LocalEntry {
            id_tag: format!("{:0>len$X}", i, len = len),
            id_type: "ISO14443".into(),
            expiry: (i % 2 == 0).then(crate::time::now),
        }
    }

    fn cards(n: usize) -> Vec<LocalEntry> {
        (0..n).map(|i| card(i, 14)).collect()
    }

    fn sizes(calls: &[Command]) -> Vec<(bool, usize)> {
        calls
            .iter()
            .map(|c| match c {
                Command::SendLocalList { full, entries, .. } => (*full, entries.len()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_long_list_goes_as_one_full_update_then_differential_ones_of_the_same_version() {
        let calls = plan(Version::V201, 7, Some(3), &cards(45), 20);
        assert_eq!(sizes(&calls), [(true, 20), (false, 20), (false, 5)]);
        assert!(calls
            .iter()
            .all(|c| matches!(c, Command::SendLocalList { version: 7, .. })));
    }

    #[test]
    fn a_charger_that_holds_the_sites_version_gets_nothing_and_an_unknown_one_gets_it_all() {
        assert!(plan(Version::V16, 4, Some(4), &cards(3), 20).is_empty());
        assert_eq!(
            sizes(&plan(Version::V16, 4, None, &cards(3), 20)),
            [(true, 3)]
        );
    }

    #[test]
    fn an_empty_list_clears_the_charger_with_one_full_update() {
        assert_eq!(sizes(&plan(Version::V16, 2, Some(1), &[], 20)), [(true, 0)]);
        let calls = plan(Version::V201, 2, Some(1), &[], 20);
        for version in [Version::V16, Version::V201] {
            request(&calls[0], version).expect("an empty Full update is schema-valid");
        }
    }

    #[test]
    fn a_uid_longer_than_a_1_6_id_tag_stays_off_1_6_lists_only() {
        let entries = vec![card(1, 14), card(2, 24)];
        assert_eq!(
            sizes(&plan(Version::V16, 1, None, &entries, 20)),
            [(true, 1)]
        );
        assert_eq!(
            sizes(&plan(Version::V201, 1, None, &entries, 20)),
            [(true, 2)]
        );
    }

    #[test]
    fn every_planned_call_is_valid_against_its_versions_official_schema() {
        for version in [Version::V16, Version::V201] {
            for c in plan(version, 9, None, &cards(5), 2) {
                let r = request(&c, version).expect("schema-valid");
                assert_eq!(r.action, "SendLocalList");
                let list = &r.payload["localAuthorizationList"];
                match version {
                    Version::V16 => {
                        assert_eq!(r.payload["listVersion"], 9);
                        assert_eq!(list[0]["idTagInfo"]["status"], "Accepted");
                    }
                    Version::V201 => {
                        assert_eq!(r.payload["versionNumber"], 9);
                        assert_eq!(list[0]["idToken"]["type"], "ISO14443");
                        assert_eq!(list[0]["idTokenInfo"]["status"], "Accepted");
                    }
                }
            }
            let get = request(&Command::GetLocalListVersion, version).unwrap();
            assert_eq!(get.action, "GetLocalListVersion");
        }
        let bad = Command::SendLocalList {
            version: 0,
            full: true,
            entries: vec![],
        };
        assert!(
            request(&bad, Version::V16).is_err(),
            "a version is at least 1"
        );
        assert!(
            !format!("{:?}", card(1, 14)).contains(&card(1, 14).id_tag),
            "a UID never reaches a log line"
        );
    }

    #[test]
    fn answers_are_checked_against_the_response_schemas() {
        use crate::ocpp::commands::check_answer;
        use serde_json::json;
        for version in [Version::V16, Version::V201] {
            check_answer("SendLocalList", version, &json!({"status": "Accepted"})).unwrap();
            assert!(check_answer("SendLocalList", version, &json!({"status": "Maybe"})).is_err());
        }
        check_answer(
            "GetLocalListVersion",
            Version::V16,
            &json!({"listVersion": 3}),
        )
        .unwrap();
        check_answer(
            "GetLocalListVersion",
            Version::V201,
            &json!({"versionNumber": 3}),
        )
        .unwrap();
        assert!(check_answer(
            "GetLocalListVersion",
            Version::V201,
            &json!({"listVersion": 3})
        )
        .is_err());
    }
}

//! Id-tag decisions, pure: given the site's rules and the presented tag, accept or refuse.
//!
//! Until OTP authorizations exist, a tag is accepted only on a free-vend site
//! (`[auth] free_vend = true`); every other tag is refused as `invalid`.

use crate::store::AuthDecision;

/// Judges an id tag presented at a charger (Authorize or StartTransaction).
pub fn check_tag(id_tag: &str, free_vend: bool) -> AuthDecision {
    AuthDecision {
        method: "rfid",
        result: if free_vend { "accepted" } else { "invalid" },
        order_id: None,
        tag_key: id_tag.to_string(),
    }
}

/// The OCPP 1.6 `AuthorizationStatus` for a decision's result.
pub fn ocpp_status(result: &str) -> &'static str {
    match result {
        "accepted" => "Accepted",
        "expired" => "Expired",
        "blocked" => "Blocked",
        _ => "Invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_accepted_only_on_a_free_vend_site() {
        assert_eq!(check_tag("ABC", true).result, "accepted");
        assert_eq!(check_tag("ABC", false).result, "invalid");
        assert_eq!(ocpp_status("invalid"), "Invalid");
        assert_eq!(ocpp_status("blocked"), "Blocked");
    }
}
